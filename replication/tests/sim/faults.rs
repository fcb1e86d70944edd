//! The faults of one schedule, drawn from its seed: broker crashes, network
//! partitions (controller↔broker, broker↔broker, broker↔API server, a broker
//! cut off from everything), a slow or unreachable API server, controller
//! leader changes, a master or a follower losing its volume, and delayed (hence reordered) messages. A fault may aim at
//! "the master" or "a follower": resolved when it strikes, so schedules hit
//! failover often.

use dduomq_replication::MemberId;

use super::GROUP_SIZE;
use super::net::{Node, Time};
use super::rng::Rng;

/// Faults start after the first election had time to happen, and stop here.
pub const ACTIVE_MS: Time = 4000;
const FIRST_FAULT_MS: Time = 300;
const MAX_FAULTS: u64 = 8;

/// Which member a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Member(MemberId),
    /// Whoever acts as master when it strikes.
    Master,
    /// The `n`-th member (0 or 1) that is not the master when it strikes.
    Follower(usize),
}

/// One side of a network cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Controller(usize),
    Broker(Target),
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Crash {
        target: Target,
        down_for: Time,
    },
    Cut {
        a: Endpoint,
        b: Endpoint,
        lasts: Time,
    },
    /// Cut from the controllers, the API server and the other members.
    Isolate {
        target: Target,
        lasts: Time,
    },
    SlowApi {
        lasts: Time,
        extra_ms: Time,
    },
    ApiOutage {
        lasts: Time,
    },
    /// The master crashes and comes back `down_for` later with an empty
    /// volume (pod and claim deleted): it must not be made master again, or
    /// its empty log would cut the replicas'. Only the first of a schedule
    /// loses the volume (two could lose every copy), others are plain
    /// crashes. The master of epoch 1 is the hard case: an empty history
    /// does not tell it apart from a new group's member, only its store
    /// identity does; a quick restart (below the fencing deadline) brings
    /// it back before any election, still the recorded master.
    LoseVolume {
        down_for: Time,
    },
    /// The leading controller stops; the other leads after `gap`.
    LeaderChange {
        gap: Time,
    },
    /// Correlated failures: a follower loses the master for `lasts` (it falls
    /// behind, and out of the in-sync set), then the master crashes
    /// `master_after` later, then the other follower `other_after` after that
    /// — the lagging one is then the only member left alive.
    Cascade {
        lasts: Time,
        master_after: Time,
        other_after: Time,
        down_for: Time,
    },
    /// A follower loses its volume and comes back empty `down_for` later,
    /// still in the recorded in-sync set; the master crashes `master_after`
    /// after the loss and the other follower `other_after` after that, both
    /// for `crashed_for`. The empty member must not be elected (it is in
    /// the set and ready): only its store identity tells. Shares the
    /// one-loss-per-schedule rule of `LoseVolume`.
    FollowerLosesVolume {
        down_for: Time,
        master_after: Time,
        other_after: Time,
        crashed_for: Time,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub at: Time,
    pub fault: Fault,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    from: Time,
    until: Time,
}

impl Window {
    fn contains(&self, at: Time) -> bool {
        (self.from..self.until).contains(&at)
    }
}

/// Messages between `a` and `b` (both ways) are lost during `window`.
#[derive(Debug, Clone, Copy)]
struct Partition {
    a: Node,
    b: Node,
    window: Window,
}

#[derive(Debug, Clone, Copy)]
struct SlowApi {
    window: Window,
    extra_ms: Time,
}

#[derive(Debug, Default)]
pub struct Faults {
    pub planned: Vec<Planned>,
    partitions: Vec<Partition>,
    slow_api: Vec<SlowApi>,
    api_outages: Vec<Window>,
    /// Per mille of messages delayed by 20–400 ms (and so reordered).
    pub delay_per_mille: u64,
}

fn draw_target(rng: &mut Rng) -> Target {
    match rng.range(0, 10) {
        0..4 => Target::Master,
        4..7 => Target::Follower(rng.range(0, 2) as usize),
        _ => Target::Member(rng.range(0, GROUP_SIZE as u64) as MemberId),
    }
}

fn draw_fault(rng: &mut Rng) -> Fault {
    let lasts = rng.range(100, 2500);
    let target = draw_target(rng);
    match rng.range(0, 13) {
        0..2 => Fault::Crash {
            target,
            down_for: lasts,
        },
        2 => Fault::Cut {
            a: Endpoint::Controller(rng.range(0, 2) as usize),
            b: Endpoint::Broker(target),
            lasts,
        },
        3 => Fault::Cut {
            a: Endpoint::Broker(target),
            b: Endpoint::Broker(draw_target(rng)),
            lasts,
        },
        4 => Fault::Cut {
            a: Endpoint::Broker(target),
            b: Endpoint::Api,
            lasts,
        },
        5 => Fault::Isolate { target, lasts },
        6 => Fault::SlowApi {
            lasts,
            extra_ms: rng.range(100, 700),
        },
        7 => Fault::ApiOutage { lasts },
        8 => Fault::Cascade {
            lasts,
            master_after: rng.range(400, 1500),
            other_after: rng.range(0, 300),
            down_for: rng.range(300, 2000),
        },
        9 => Fault::LoseVolume { down_for: lasts },
        10 => Fault::LoseVolume {
            down_for: rng.range(50, 300),
        },
        11 => Fault::FollowerLosesVolume {
            down_for: rng.range(50, 300),
            master_after: rng.range(100, 1200),
            other_after: rng.range(0, 300),
            crashed_for: rng.range(300, 2000),
        },
        _ => Fault::LeaderChange {
            gap: rng.range(0, 300),
        },
    }
}

impl Faults {
    pub fn draw(rng: &mut Rng) -> Self {
        let delay_per_mille = rng.range(0, 80);
        let count = rng.range(0, MAX_FAULTS + 1);
        let planned = (0..count)
            .map(|_| Planned {
                at: rng.range(FIRST_FAULT_MS, ACTIVE_MS),
                fault: draw_fault(rng),
            })
            .collect();
        Faults {
            planned,
            delay_per_mille,
            ..Faults::default()
        }
    }

    /// Cut `a` from `b` for `lasts` from `now`.
    pub fn cut(&mut self, a: Node, b: Node, now: Time, lasts: Time) {
        if a != b {
            let window = Window {
                from: now,
                until: now + lasts,
            };
            self.partitions.push(Partition { a, b, window });
        }
    }

    pub fn slow_api(&mut self, now: Time, lasts: Time, extra_ms: Time) {
        let window = Window {
            from: now,
            until: now + lasts,
        };
        self.slow_api.push(SlowApi { window, extra_ms });
    }

    pub fn api_outage(&mut self, now: Time, lasts: Time) {
        self.api_outages.push(Window {
            from: now,
            until: now + lasts,
        });
    }

    /// Messages between `a` and `b` are lost at `at`.
    pub fn blocked(&self, a: Node, b: Node, at: Time) -> bool {
        let api_down =
            (a == Node::Api || b == Node::Api) && self.api_outages.iter().any(|w| w.contains(at));
        api_down
            || self
                .partitions
                .iter()
                .any(|p| p.window.contains(at) && ((p.a, p.b) == (a, b) || (p.a, p.b) == (b, a)))
    }

    /// Extra latency of the API server at `at`.
    pub fn api_extra_ms(&self, at: Time) -> Time {
        self.slow_api
            .iter()
            .filter(|slow| slow.window.contains(at))
            .map(|slow| slow.extra_ms)
            .max()
            .unwrap_or(0)
    }
}
