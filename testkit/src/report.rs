//! Timings and counts of a suite, by step, printed as they come and saved as
//! JSON after every step (so a failed run still leaves what it measured).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

/// Timings and counts, by step; saved after every step.
#[derive(Debug)]
pub struct Report {
    path: PathBuf,
    data: Mutex<serde_json::Map<String, Value>>,
}

impl Report {
    /// A report saved to `path`.
    pub fn new(path: PathBuf) -> Report {
        Report {
            path,
            data: Mutex::new(serde_json::Map::new()),
        }
    }

    pub fn set(&self, step: &str, key: &str, value: impl Into<Value>) {
        let mut data = self.data.lock();
        let entry = data.entry(step.to_string()).or_insert_with(|| json!({}));
        entry[key] = value.into();
    }

    pub fn save(&self) {
        let text = serde_json::to_string_pretty(&*self.data.lock()).expect("report as JSON");
        std::fs::write(&self.path, text + "\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.path.display()));
    }

    pub fn print_summary(&self) {
        let data = self.data.lock();
        eprintln!("=== summary");
        for (step, entries) in data.iter() {
            match entries.as_object() {
                Some(map) => {
                    eprintln!("  {step}");
                    for (k, v) in map {
                        eprintln!("    {k:<34} {v}");
                    }
                }
                None => eprintln!("  {step:<36} {entries}"),
            }
        }
        let text = serde_json::to_string_pretty(&*data).expect("report as JSON");
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        println!("{name} ({}):\n{text}", self.path.display());
    }
}

/// One scenario: its `=== step` line, its report section and its duration.
#[derive(Debug)]
pub struct Step<'a> {
    report: &'a Report,
    key: &'static str,
    started: Instant,
}

impl<'a> Step<'a> {
    pub fn start(report: &'a Report, key: &'static str, title: &str) -> Step<'a> {
        eprintln!("=== step {key}: {title}");
        Step {
            report,
            key,
            started: Instant::now(),
        }
    }

    /// Prints a result and records it in the report.
    pub fn set(&self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        eprintln!("    {key}: {}", value_text(&value));
        self.report.set(self.key, key, value);
    }

    pub fn done(self) {
        let took = self.started.elapsed();
        self.report.set(self.key, "step_s", secs(took));
        self.report.save();
        eprintln!("    step {} passed in {:.1}s", self.key, took.as_secs_f64());
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds, rounded to milliseconds (as the report shows them).
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
