//! A real broker in the test process: a `Store` on a tempdir and
//! `Broker::open` over it, wired like `main.rs` does, without the servers.
//! Closing and reopening it on the same directory is a broker restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dduomq_broker::config::{BrokerConfig, MessagingConfig};
use dduomq_broker::messaging::Broker;
use dduomq_broker::messaging::error::Result;
use dduomq_broker::metrics::Metrics;
use dduomq_broker::store::Store;
use tokio::task::JoinHandle;

/// Whether the broker's background loops (delayed delivery, transaction
/// checks) run. Stopped loops make "nothing was released before the restart"
/// certain, however slow the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loops {
    Stopped,
    Running,
}

/// How a broker goes down before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// [`TestBroker::close`].
    Clean,
    /// [`TestBroker::kill`].
    WithoutSaving,
}

/// The messaging configuration the tests start from: the shipped defaults
/// with explicit topics and groups only, and short retry backoffs so
/// redeliveries come within a test's time.
pub fn messaging_config() -> MessagingConfig {
    let mut config = BrokerConfig::load(None).expect("defaults parse").broker;
    config.auto_create_topics = false;
    config.retry_backoff = vec![Duration::from_millis(20)];
    config
}

/// A broker opened on a data directory.
pub struct TestBroker {
    pub broker: Arc<Broker>,
    store: Arc<Store>,
    loops: Vec<JoinHandle<()>>,
    dir: PathBuf,
}

impl TestBroker {
    /// Opens the store and the broker on `dir` (recovering what is there).
    pub fn open(dir: &Path, config: MessagingConfig, loops: Loops) -> TestBroker {
        TestBroker::open_as(dir, config, loops, Broker::open)
    }

    /// [`TestBroker::open`] as a member of a replicated group: a replica
    /// until promoted.
    pub fn open_replica(dir: &Path, config: MessagingConfig, loops: Loops) -> TestBroker {
        TestBroker::open_as(dir, config, loops, Broker::open_replica)
    }

    fn open_as(
        dir: &Path,
        config: MessagingConfig,
        loops: Loops,
        open: impl FnOnce(MessagingConfig, Arc<Store>, Option<Arc<Metrics>>) -> Result<Broker>,
    ) -> TestBroker {
        let store = Arc::new(Store::open(super::config(dir)).expect("store opens"));
        let broker = Arc::new(open(config, store.clone(), None).expect("broker opens"));
        let loops = match loops {
            Loops::Stopped => Vec::new(),
            Loops::Running => vec![
                tokio::spawn(broker.clone().run_delayed_delivery()),
                tokio::spawn(broker.clone().run_transaction_checks()),
            ],
        };
        TestBroker {
            broker,
            store,
            loops,
            dir: dir.to_path_buf(),
        }
    }

    /// The store, for what the broker API does not show (system topics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Goes down `how`, then opens again on the same directory.
    pub async fn restart(self, how: Shutdown, config: MessagingConfig, loops: Loops) -> TestBroker {
        let dir = self.dir.clone();
        self.shut_down(how).await;
        TestBroker::open(&dir, config, loops)
    }

    /// A clean shutdown, as the binary does on SIGTERM: the loops stop,
    /// progress, staged positions and producer windows are saved, the store
    /// is flushed and closed.
    pub async fn close(self) {
        self.shut_down(Shutdown::Clean).await;
    }

    /// A broker that dies without saving its metadata (progress, staged scan
    /// position, producer windows): what it stored is in the log, which the
    /// store itself closes intact.
    pub async fn kill(self) {
        self.shut_down(Shutdown::WithoutSaving).await;
    }

    pub async fn shut_down(self, how: Shutdown) {
        self.broker.begin_shutdown();
        for task in self.loops {
            task.await.expect("background loop ends cleanly");
        }
        if how == Shutdown::Clean {
            super::api::save_metadata(&self.broker);
        }
        // The store's directory lock goes with its last reference: a reopen
        // must not find it still held.
        assert_eq!(
            Arc::strong_count(&self.broker),
            1,
            "something still holds the broker"
        );
        drop(self.broker);
        self.store.close().expect("store closes");
        assert_eq!(
            Arc::strong_count(&self.store),
            1,
            "something still holds the store"
        );
    }
}

/// How long a test waits for something the broker does in the background (a
/// redelivery, a release, a check) before failing: long enough for a busy
/// machine, and only ever spent when something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns `Some`, failing the test after
/// [`PATIENCE`] with `what`.
pub async fn poll_until<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    dduomq_testkit::eventually_every(Duration::from_millis(5), PATIENCE, what, probe).await
}

/// Waits until the wall clock (which the broker reads) is past `ms`.
pub async fn wait_past(ms: i64) {
    poll_until("the clock to pass a moment", async || {
        (dduomq_broker::store::now_millis() > ms).then_some(())
    })
    .await;
}
