//! The fleet's next step, decided from the StatefulSet alone (its replicas and
//! our annotations), so the loop keeps no state an operator restart would lose.

use std::collections::BTreeSet;
use std::ops::Range;

/// Annotation (set by the chart): how many write units the release wants.
pub const DESIRED_REPLICAS: &str = "dduomq.io/desired-replicas";
/// Annotation (set by the operator): the ordinals it made drain for a scale-in,
/// comma-separated, written before the first `SetDraining`, so they are
/// undrained if the scale-in is called off, also after an operator restart.
pub const SCALE_IN_DRAINING: &str = "dduomq.io/scale-in-draining";
/// Annotation (set by a person, `kubectl annotate`): `"true"` removes the
/// departing units without waiting for their drain; their unconsumed messages
/// stay on their retained volumes. Cleared once used.
pub const FORCE_SCALE_IN: &str = "dduomq.io/force-scale-in";

/// What the StatefulSet says about the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    /// `spec.replicas`: the write units that exist (one broker each with
    /// replication factor 1).
    pub current: u32,
    /// The count the chart asks for; `None` when the annotation is absent (a
    /// StatefulSet from an older chart: left alone).
    pub desired: Option<u32>,
    /// Ordinals this operator made drain.
    pub marked: BTreeSet<u32>,
    /// Whether a person asked to skip waiting for the drain.
    pub force: bool,
}

impl FleetSpec {
    /// Reads the spec from the StatefulSet's replicas and annotations; a
    /// malformed annotation is an error naming it.
    pub fn read(
        current: u32,
        annotation: impl Fn(&str) -> Option<String>,
    ) -> Result<FleetSpec, BadAnnotation> {
        let desired = annotation(DESIRED_REPLICAS)
            .map(|v| {
                v.trim().parse::<u32>().map_err(|_| BadAnnotation {
                    annotation: DESIRED_REPLICAS,
                    value: v,
                })
            })
            .transpose()?;
        let marked = match annotation(SCALE_IN_DRAINING) {
            None => BTreeSet::new(),
            Some(v) => parse_ordinals(&v).ok_or(BadAnnotation {
                annotation: SCALE_IN_DRAINING,
                value: v,
            })?,
        };
        Ok(FleetSpec {
            current,
            desired,
            marked,
            force: annotation(FORCE_SCALE_IN).as_deref() == Some("true"),
        })
    }

    /// The next step towards the desired count.
    pub fn plan(&self) -> Plan {
        let Some(desired) = self.desired else {
            return Plan::Unmanaged;
        };
        let departing = desired.min(self.current)..self.current;
        // Units the desired count grew back over (or that are gone) stop draining.
        let undrain: Vec<u32> = self
            .marked
            .iter()
            .copied()
            .filter(|o| !departing.contains(o))
            .collect();
        if desired >= self.current {
            return Plan::Grow {
                to: desired,
                undrain,
            };
        }
        Plan::ScaleIn {
            to: desired,
            undrain,
            newly_departing: departing
                .clone()
                .filter(|o| !self.marked.contains(o))
                .collect(),
            departing,
            force: self.force,
        }
    }
}

/// The next step of the fleet loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No desired count declared: the operator leaves the replicas alone.
    Unmanaged,
    /// At or above the current count: undrain what was marked, then raise the
    /// replicas to `to` (a no-op when equal).
    Grow { to: u32, undrain: Vec<u32> },
    /// Below the current count: mark and drain `departing` (highest ordinals
    /// first to go, as the StatefulSet removes them), then lower to `to`.
    ScaleIn {
        to: u32,
        undrain: Vec<u32>,
        newly_departing: Vec<u32>,
        departing: Range<u32>,
        force: bool,
    },
}

/// An annotation the operator cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} is not valid")]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub value: String,
}

/// `"3,4"` → {3, 4}; `""` → {}.
pub fn parse_ordinals(value: &str) -> Option<BTreeSet<u32>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// {3, 4} → `"3,4"`.
pub fn format_ordinals(ordinals: &BTreeSet<u32>) -> String {
    ordinals
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(current: u32, annotations: &[(&str, &str)]) -> FleetSpec {
        let a: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FleetSpec::read(current, |k| a.get(k).cloned()).expect("valid annotations")
    }

    #[test]
    fn without_a_desired_count_the_replicas_are_left_alone() {
        assert_eq!(spec(5, &[]).plan(), Plan::Unmanaged);
    }

    #[test]
    fn a_higher_desired_count_raises_the_replicas() {
        assert_eq!(
            spec(3, &[(DESIRED_REPLICAS, "5")]).plan(),
            Plan::Grow {
                to: 5,
                undrain: vec![]
            }
        );
    }

    #[test]
    fn a_lower_desired_count_drains_the_highest_ordinals() {
        assert_eq!(
            spec(5, &[(DESIRED_REPLICAS, "3")]).plan(),
            Plan::ScaleIn {
                to: 3,
                undrain: vec![],
                newly_departing: vec![3, 4],
                departing: 3..5,
                force: false,
            }
        );
        // Already marked: nothing new to mark.
        assert_eq!(
            spec(
                5,
                &[
                    (DESIRED_REPLICAS, "3"),
                    (SCALE_IN_DRAINING, "3,4"),
                    (FORCE_SCALE_IN, "true")
                ]
            )
            .plan(),
            Plan::ScaleIn {
                to: 3,
                undrain: vec![],
                newly_departing: vec![],
                departing: 3..5,
                force: true,
            }
        );
    }

    #[test]
    fn raising_the_count_again_undrains_what_no_longer_departs() {
        // 5 → 3 was draining 3 and 4; now 4 is wanted: 3 stays, 4 still goes.
        assert_eq!(
            spec(5, &[(DESIRED_REPLICAS, "4"), (SCALE_IN_DRAINING, "3,4")]).plan(),
            Plan::ScaleIn {
                to: 4,
                undrain: vec![3],
                newly_departing: vec![],
                departing: 4..5,
                force: false,
            }
        );
        // Back to 5: the scale-in is called off.
        assert_eq!(
            spec(5, &[(DESIRED_REPLICAS, "5"), (SCALE_IN_DRAINING, "3,4")]).plan(),
            Plan::Grow {
                to: 5,
                undrain: vec![3, 4]
            }
        );
    }

    #[test]
    fn malformed_annotations_are_named() {
        let err = FleetSpec::read(3, |k| (k == DESIRED_REPLICAS).then(|| "three".to_string()))
            .unwrap_err();
        assert_eq!(err.annotation, DESIRED_REPLICAS);
        let err = FleetSpec::read(3, |k| (k == SCALE_IN_DRAINING).then(|| "3,x".to_string()))
            .unwrap_err();
        assert_eq!(err.annotation, SCALE_IN_DRAINING);
    }

    #[test]
    fn ordinals_round_trip() {
        let set: BTreeSet<u32> = [4, 3].into();
        assert_eq!(format_ordinals(&set), "3,4");
        assert_eq!(parse_ordinals("3, 4"), Some(set));
        assert_eq!(parse_ordinals(""), Some(BTreeSet::new()));
    }
}
