//! Replication inside a broker group: one master and its replicas hold the
//! same commit log byte for byte (see docs/architecture.md, "Replication").
//! The rules (epochs, acknowledgements, leases, role changes) are the pure
//! crate `dduomq-replication`; this module is their I/O: the master streams
//! its log to followers and acknowledges writes once its in-sync set stored
//! them, the follower task stores what it receives, and AssignRole switches
//! roles.
//!
//! ```text
//! config.rs    the [replication] table
//! error.rs     NOT_MASTER and QUORUM_TIMEOUT refusals
//! acks.rs      the write path: who may append, and waiting for acknowledgements
//! assign.rs    AssignRole: role changes and lease renewals
//! master.rs    serving a follower's Follow stream
//! follower.rs  the follower task: follows the assigned master
//! heal.rs      a replica heals damaged ranges of its log from the master
//! report.rs    ReplicaState (BrokerInfo, AssignRole replies) and gauges
//! metrics.rs   the replication metrics
//! ```

mod acks;
mod assign;
mod config;
mod error;
mod follower;
mod heal;
mod master;
mod metrics;
mod report;

pub use acks::Term;
pub use config::{AckPolicy, ReplicationConfig};
pub use error::{NotMasterCause, ReplicationError};
pub use metrics::ReplicationMetrics;

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dduomq_replication::{AckTracker, MasterLease, MemberRole, Monotonic, Placement, Role};
use parking_lot::Mutex;
use tokio::sync::{RwLock, watch};

use crate::metrics::Metrics;
use crate::store::Store;
use acks::Acks;
use dduomq_proto::signature::Signer;
use follower::FollowTarget;

/// The lease of a static group's master: it never lapses (no controller
/// renews it; a static group has no failover).
const STATIC_LEASE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What the messaging layer does when this member stops being master. It is
/// called during the switch, while nothing of the old role appends any more
/// and before the follower task stores anything of the new master, so what
/// it records of the log is the old master's own.
pub trait SteppingDown: Send + Sync {
    fn stepping_down(&self);
}

/// This broker's part in its group.
#[derive(Debug)]
pub struct Replication {
    config: ReplicationConfig,
    placement: Placement,
    store: Arc<Store>,
    /// Appends (a master's writes, a replica's received chunks) hold it
    /// shared; a role switch holds it exclusively, so nothing the old role
    /// appends lands after the switch.
    gate: RwLock<()>,
    state: Mutex<State>,
    /// What writes waiting for acknowledgements watch.
    acks: watch::Sender<Acks>,
    /// The master the follower task follows (`None`: follow nobody).
    target: watch::Sender<Option<FollowTarget>>,
    /// True while a Follow stream is answered by the master: this replica's
    /// consumers belong with the master then (see [`Replication::serves_consumers`]).
    streaming_from_master: watch::Sender<bool>,
    /// Turns true at shutdown: Follow streams end, so the gRPC server's
    /// graceful stop does not wait for them.
    stopping: watch::Sender<bool>,
    /// The origin of this process's monotonic readings.
    origin: Instant,
    metrics: Option<Arc<Metrics>>,
    /// How this broker dials its master.
    peering: Peering,
    /// Told when this member stops being master (the messaging layer).
    stepping_down: OnceLock<Weak<dyn SteppingDown>>,
}

/// How a replica dials its master: its requests signed with the brokers' own
/// user (authentication), over TLS when the listeners use it.
#[derive(Debug, Clone)]
pub struct Peering {
    pub signer: Signer,
    pub tls: crate::tls::TlsConfig,
}

/// The member's role and, as master, its bookkeeping.
#[derive(Debug)]
struct State {
    role: MemberRole,
    master: Option<Mastership>,
    /// Replica: the master's committed end, as it last told.
    upstream_committed: Option<u64>,
}

/// A master's bookkeeping for its epoch.
#[derive(Debug)]
struct Mastership {
    tracker: AckTracker,
    lease: MasterLease,
    /// The highest committed end published (it never moves back).
    committed_end: u64,
}

impl Replication {
    /// The replication of broker `ordinal` on `store`. A static group assigns
    /// its roles at once; otherwise the broker waits for the controller's
    /// AssignRole, taking no writes.
    pub async fn start(
        config: ReplicationConfig,
        ordinal: u32,
        store: Arc<Store>,
        metrics: Option<Arc<Metrics>>,
        peering: Peering,
    ) -> crate::store::Result<Arc<Replication>> {
        let placement = config.layout().placement(ordinal);
        let role = MemberRole::at_start(&store.epochs());
        let replication = Arc::new(Replication {
            placement,
            gate: RwLock::new(()),
            state: Mutex::new(State {
                role,
                master: None,
                upstream_committed: None,
            }),
            acks: watch::channel(Acks::Closed).0,
            target: watch::channel(None).0,
            streaming_from_master: watch::channel(false).0,
            stopping: watch::channel(false).0,
            origin: Instant::now(),
            metrics,
            peering,
            stepping_down: OnceLock::new(),
            store,
            config,
        });
        // Consumers of quorum topics see acknowledged records only: until a
        // master's committed end arrives, nothing this log holds is known to
        // be. Any topic may be one (its own ack_policy), whatever the default.
        replication.store.hide_unacknowledged();
        if let Some(master) = replication.config.static_master {
            replication.assign_static(master).await?;
        }
        Ok(replication)
    }

    /// Runs the follower task and, in a static group, the master's recording
    /// of its own in-sync proposals, until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let follower = tokio::spawn(self.clone().run_follower(shutdown.clone()));
        let mut tick = tokio::time::interval(self.config.replica_lag_max / 2);
        loop {
            tokio::select! {
                _ = tick.tick(), if self.config.static_master.is_some() => {
                    self.record_own_proposal();
                }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.stopping.send_replace(true);
        let _ = follower.await;
    }

    /// The group and member index of this broker.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// A reading of this process's monotonic clock.
    fn now(&self) -> Monotonic {
        self.origin.elapsed()
    }

    /// A reading of the clock leases count on (e.g. when an AssignRole
    /// arrived).
    pub fn clock(&self) -> Monotonic {
        self.now()
    }

    /// Whether the controller (or the static configuration) made this member
    /// its group's master, whatever the state of its lease.
    pub fn is_master(&self) -> bool {
        matches!(self.state.lock().role.role, Role::Master)
    }

    /// The epoch this member is master of, whatever the state of its lease.
    pub fn master_epoch(&self) -> Option<u64> {
        let state = self.state.lock();
        state.master.as_ref().map(|_| state.role.epoch)
    }

    /// Runs `f` if this member is still master of `epoch`, with no role
    /// switch in between (a step-down waits for it, or `f` does not run);
    /// whether it ran.
    pub fn while_master_of(&self, epoch: u64, f: impl FnOnce()) -> bool {
        let state = self.state.lock();
        let current = state.master.is_some() && state.role.epoch == epoch;
        if current {
            f();
        }
        current
    }

    /// Makes `observer` hear when this member stops being master (once).
    pub fn observe_stepping_down(&self, observer: Weak<dyn SteppingDown>) {
        if self.stepping_down.set(observer).is_err() {
            tracing::error!("a step-down observer was set twice; keeping the first");
        }
    }

    /// Whether consumers may lease messages here: on a master, or on a
    /// replica while no master answers it (reads without a master). A replica
    /// streaming from its master serves none: a consumer of both would be
    /// leased the same messages twice, and what it acks here counts nowhere.
    /// Nor does a member that no master has told which records are
    /// acknowledged since it started (unassigned, or following one that does
    /// not answer): it hides them all, a master may well be serving, and a
    /// restarted member of the soak answered a consumer that its group did
    /// not exist.
    pub fn serves_consumers(&self) -> Result<(), ReplicationError> {
        let role = self.state.lock().role.role;
        match role {
            Role::Master => Ok(()),
            Role::Replica { .. } if *self.streaming_from_master.borrow() => {
                Err(ReplicationError::ConsumersAtMaster {
                    group: self.placement.group,
                    member: self.placement.member,
                    master_address: self.target.borrow().as_ref().map(|t| t.address.clone()),
                })
            }
            Role::Replica { .. } if self.store.knows_acknowledged_end() => Ok(()),
            Role::Replica { .. } | Role::Unassigned => Err(ReplicationError::ConsumersNotReady {
                group: self.placement.group,
                member: self.placement.member,
            }),
        }
    }

    /// Changes when this replica starts or stops following a live master.
    pub fn watch_streaming_from_master(&self) -> watch::Receiver<bool> {
        self.streaming_from_master.subscribe()
    }

    /// A NOT_MASTER refusal naming the master's address when known.
    pub fn not_master(&self, cause: NotMasterCause) -> ReplicationError {
        ReplicationError::NotMaster {
            group: self.placement.group,
            member: self.placement.member,
            cause,
            master_address: self.target.borrow().as_ref().map(|t| t.address.clone()),
        }
    }
}
