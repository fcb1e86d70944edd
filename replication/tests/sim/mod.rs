//! The seeded election-safety simulation: one group of three members, two
//! controllers (one leading at a time), an API server with compare-and-swap,
//! clients, and faults drawn from the seed, all in virtual time. The members
//! and controllers decide with the crate's real rules; the checker
//! (`checker.rs`) states the invariants.

mod broker;
mod checker;
mod controller;
mod faults;
mod net;
mod rng;

use broker::SimBroker;
use checker::Checker;
use controller::{ASSIGN_TIMEOUT_MS, SimController};
use dduomq_replication::{GroupRecord, MemberId, Role};
use faults::{ACTIVE_MS, Endpoint, Fault, Faults, Target};
use net::{Answer, Caller, Event, Msg, Node, Outbox, Queue, Stored, Time, Timer};
use rng::Rng;

pub const GROUP_SIZE: u32 = 3;
/// After the faults stop, the schedule runs on this long (everything heals).
const HEAL_MS: Time = 2000;
const CLIENT_MS: Time = 20;

/// Which rules run: the product's, or one deliberately broken to show the
/// checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Correct,
    /// The master stops waiting for a member it proposes to remove before the
    /// controller recorded the smaller in-sync set.
    AckBeforeRecorded,
    /// The controller elects as soon as the master looks failed, without
    /// waiting for the fencing deadline (or, as a new leader, one lease).
    ElectWithoutFence,
    /// The master streams to a follower from its end without checking the
    /// epoch history (no truncation of a divergent tail).
    SkipDivergenceCheck,
    /// A member named master does not check the store identity the record
    /// names (the rules before identities): the master of epoch 1 that lost
    /// its volume is made master of epoch 1 again, empty.
    IgnoreStoreIdentity,
    /// The controller records no store for the in-sync replicas (the rules
    /// before them): a follower back empty on a new volume, still in the
    /// recorded set, is elected once the others fail.
    IgnoreReplicaStores,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Correct,
        Variant::AckBeforeRecorded,
        Variant::ElectWithoutFence,
        Variant::SkipDivergenceCheck,
        Variant::IgnoreStoreIdentity,
        Variant::IgnoreReplicaStores,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::AckBeforeRecorded => "ack-before-recorded",
            Variant::ElectWithoutFence => "elect-without-fence",
            Variant::SkipDivergenceCheck => "skip-divergence-check",
            Variant::IgnoreStoreIdentity => "ignore-store-identity",
            Variant::IgnoreReplicaStores => "ignore-replica-stores",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|variant| variant.name() == name)
    }
}

/// What one schedule did.
#[derive(Debug)]
pub struct Outcome {
    pub faults: usize,
    pub elections: u64,
    pub acked: usize,
    pub violation: Option<String>,
}

/// A schedule that broke an invariant: replay it with its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub violation: String,
}

/// How many failing seeds a summary lists.
const LISTED_FAILURES: usize = 20;

/// What a run of schedules did.
#[derive(Debug, Default)]
pub struct Summary {
    pub schedules: u64,
    pub faults: usize,
    pub elections: u64,
    pub acked: usize,
    pub failures: u64,
    pub first_failure: Option<Failure>,
    /// The first failing seeds (up to 20).
    pub failing_seeds: Vec<u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} schedules, {} faults injected, {} elections, {} acknowledged records, {} failing",
            self.schedules, self.faults, self.elections, self.acked, self.failures
        )?;
        if let Some(failure) = &self.first_failure {
            write!(
                f,
                "; first failing seed {}: {}; failing seeds {:?}",
                failure.seed, failure.violation, self.failing_seeds
            )?;
        }
        Ok(())
    }
}

/// When a run of schedules stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    AtFirstFailure,
    AfterAll,
}

/// Whether a schedule prints every event (to replay a failing seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    Quiet,
    Events,
}

#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub variant: Variant,
    pub stop: Stop,
    pub trace: Trace,
}

/// Seeds `first_seed..first_seed + count`.
pub fn run_schedules(first_seed: u64, count: u64, run: Run) -> Summary {
    let mut summary = Summary::default();
    for seed in first_seed..first_seed + count {
        let outcome = run_schedule(seed, run);
        summary.schedules += 1;
        summary.faults += outcome.faults;
        summary.elections += outcome.elections;
        summary.acked += outcome.acked;
        if let Some(violation) = outcome.violation {
            summary.failures += 1;
            if summary.failing_seeds.len() < LISTED_FAILURES {
                summary.failing_seeds.push(seed);
            }
            summary
                .first_failure
                .get_or_insert(Failure { seed, violation });
            if run.stop == Stop::AtFirstFailure {
                break;
            }
        }
    }
    summary
}

fn run_schedule(seed: u64, run: Run) -> Outcome {
    let mut world = World::new(seed, run.variant);
    world.trace = run.trace;
    world.run();
    Outcome {
        faults: world.faults.planned.len(),
        elections: world.elections,
        acked: world.checker.acked(),
        violation: world.checker.violation,
    }
}

struct World {
    now: Time,
    variant: Variant,
    trace: Trace,
    rng: Rng,
    queue: Queue,
    faults: Faults,
    brokers: Vec<SimBroker>,
    controllers: [SimController; 2],
    leader: Option<usize>,
    stored: Stored,
    elections: u64,
    checker: Checker,
    next_write: u64,
    /// A member lost its volume in this schedule (at most one does).
    volume_lost: bool,
}

impl World {
    fn new(seed: u64, variant: Variant) -> Self {
        let mut rng = Rng::new(seed);
        let faults = Faults::draw(&mut rng);
        // Every process has its own clock origin: no rule may compare them.
        let mut clock = || rng.range(0, 1_000_000);
        let brokers = (0..GROUP_SIZE)
            .map(|m| SimBroker::new(m, clock()))
            .collect();
        let controllers = [SimController::new(clock()), SimController::new(clock())];
        let mut world = Self {
            now: 0,
            variant,
            trace: Trace::Quiet,
            rng,
            queue: Queue::default(),
            brokers,
            controllers,
            leader: None,
            stored: Stored {
                record: GroupRecord::initial(GROUP_SIZE),
                version: 0,
            },
            elections: 0,
            checker: Checker::default(),
            next_write: 0,
            volume_lost: false,
            faults,
        };
        world.schedule_faults();
        for member in 0..GROUP_SIZE {
            world.timer(Node::Broker(member), 0, Timer::BrokerTick);
        }
        world.timer(Node::Client, 0, Timer::Client);
        world.queue.push(0, Event::LeaderGained { controller: 0 });
        world
    }

    fn schedule_faults(&mut self) {
        for planned in self.faults.planned.clone() {
            self.queue.push(planned.at, Event::Fault(planned.fault));
        }
    }

    /// The member `target` means now.
    fn resolve(&self, target: Target) -> MemberId {
        let master = (0..GROUP_SIZE).find(|&m| self.brokers[m as usize].is_master());
        match target {
            Target::Member(member) => member,
            Target::Master => master.unwrap_or(0),
            Target::Follower(n) => {
                let followers: Vec<MemberId> =
                    (0..GROUP_SIZE).filter(|&m| Some(m) != master).collect();
                followers[n % followers.len()]
            }
        }
    }

    fn node(&self, endpoint: Endpoint) -> Node {
        match endpoint {
            Endpoint::Controller(index) => Node::Controller(index),
            Endpoint::Broker(target) => Node::Broker(self.resolve(target)),
            Endpoint::Api => Node::Api,
        }
    }

    fn strike(&mut self, fault: Fault) {
        let now = self.now;
        match fault {
            Fault::Crash { target, down_for } => {
                let member = self.resolve(target);
                let broker = &mut self.brokers[member as usize];
                if broker.up {
                    broker.crash();
                    self.queue.push(now + down_for, Event::Restart { member });
                }
            }
            Fault::LoseVolume { down_for } => {
                let member = self.resolve(Target::Master);
                let broker = &mut self.brokers[member as usize];
                if broker.up {
                    if broker.role.role == Role::Master && !self.volume_lost {
                        self.volume_lost = true;
                        broker.lose_volume();
                    } else {
                        broker.crash();
                    }
                    self.queue.push(now + down_for, Event::Restart { member });
                }
            }
            Fault::Cut { a, b, lasts } => {
                let (a, b) = (self.node(a), self.node(b));
                self.faults.cut(a, b, now, lasts);
            }
            Fault::Isolate { target, lasts } => {
                let member = Node::Broker(self.resolve(target));
                let others = [Node::Controller(0), Node::Controller(1), Node::Api]
                    .into_iter()
                    .chain((0..GROUP_SIZE).map(Node::Broker));
                for other in others {
                    self.faults.cut(member, other, now, lasts);
                }
            }
            Fault::SlowApi { lasts, extra_ms } => self.faults.slow_api(now, lasts, extra_ms),
            Fault::ApiOutage { lasts } => self.faults.api_outage(now, lasts),
            Fault::FollowerLosesVolume {
                down_for,
                master_after,
                other_after,
                crashed_for,
            } => {
                let (master, lost, other) = (
                    self.resolve(Target::Master),
                    self.resolve(Target::Follower(0)),
                    self.resolve(Target::Follower(1)),
                );
                let broker = &mut self.brokers[lost as usize];
                if self.volume_lost || !broker.up || broker.is_master() {
                    return;
                }
                self.volume_lost = true;
                broker.lose_volume();
                self.queue
                    .push(now + down_for, Event::Restart { member: lost });
                let crash = |member| {
                    Event::Fault(Fault::Crash {
                        target: Target::Member(member),
                        down_for: crashed_for,
                    })
                };
                self.queue.push(now + master_after, crash(master));
                self.queue
                    .push(now + master_after + other_after, crash(other));
            }
            Fault::Cascade {
                lasts,
                master_after,
                other_after,
                down_for,
            } => {
                let (master, lagging, other) = (
                    self.resolve(Target::Master),
                    self.resolve(Target::Follower(0)),
                    self.resolve(Target::Follower(1)),
                );
                self.faults
                    .cut(Node::Broker(lagging), Node::Broker(master), now, lasts);
                let crash = |member| {
                    Event::Fault(Fault::Crash {
                        target: Target::Member(member),
                        down_for,
                    })
                };
                self.queue.push(now + master_after, crash(master));
                self.queue
                    .push(now + master_after + other_after, crash(other));
            }
            Fault::LeaderChange { gap } => {
                if let Some(leader) = self.leader.take() {
                    self.controllers[leader].lose();
                    let next = 1 - leader;
                    self.queue
                        .push(now + gap, Event::LeaderGained { controller: next });
                }
            }
        }
    }

    fn incarnation(&self, node: Node) -> u64 {
        match node {
            Node::Broker(member) => self.brokers[member as usize].incarnation,
            Node::Controller(index) => self.controllers[index].term,
            Node::Api | Node::Client => 0,
        }
    }

    fn timer(&mut self, node: Node, after: Time, timer: Timer) {
        let incarnation = self.incarnation(node);
        self.queue.push(
            self.now + after,
            Event::Timer {
                node,
                incarnation,
                timer,
            },
        );
    }

    fn send(&mut self, from: Node, to: Node, msg: Msg) {
        if self.faults.blocked(from, to, self.now) {
            return;
        }
        let mut delay = self.rng.range(1, 6);
        if from == Node::Api || to == Node::Api {
            delay += self.faults.api_extra_ms(self.now) + self.rng.range(0, 5);
        }
        if self.rng.chance(self.faults.delay_per_mille) {
            delay += self.rng.range(20, 400);
        }
        if matches!(msg, Msg::AssignRole { .. }) && delay >= ASSIGN_TIMEOUT_MS {
            // The model's timing assumption: a grant arrives within its call's
            // deadline or not at all.
            return;
        }
        let to_incarnation = self.incarnation(to);
        self.queue.push(
            self.now + delay,
            Event::Deliver {
                from,
                to,
                to_incarnation,
                msg,
            },
        );
    }

    fn flush(&mut self, node: Node, out: Outbox) {
        for (to, msg) in out.messages {
            self.send(node, to, msg);
        }
        for (after, timer) in out.timers {
            self.timer(node, after, timer);
        }
    }

    fn ready(&self) -> Vec<bool> {
        (0..GROUP_SIZE)
            .map(|m| {
                self.brokers[m as usize].up
                    && !self.faults.blocked(Node::Broker(m), Node::Api, self.now)
            })
            .collect()
    }

    fn run(&mut self) {
        while let Some((at, event)) = self.queue.pop() {
            if at >= ACTIVE_MS + HEAL_MS || self.checker.violation.is_some() {
                break;
            }
            self.now = at;
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        if self.trace == Trace::Events {
            eprintln!("{:>5} ms {event:?}", self.now);
        }
        let mut out = Outbox::default();
        match event {
            Event::Deliver {
                from,
                to,
                to_incarnation,
                msg,
            } => {
                let down = matches!(to, Node::Broker(member) if !self.brokers[member as usize].up);
                if down
                    || self.faults.blocked(from, to, self.now)
                    || self.incarnation(to) != to_incarnation
                {
                    return;
                }
                self.deliver(from, to, msg, &mut out);
                self.flush(to, out);
            }
            Event::Timer {
                node,
                incarnation,
                timer,
            } => {
                if self.incarnation(node) != incarnation {
                    return;
                }
                self.on_timer(node, timer, &mut out);
                self.flush(node, out);
            }
            Event::Fault(fault) => self.strike(fault),
            Event::Restart { member } => {
                let broker = &mut self.brokers[member as usize];
                if !broker.up {
                    broker.restart(&mut out);
                    self.flush(Node::Broker(member), out);
                }
            }
            Event::LeaderGained { controller } => {
                self.leader = Some(controller);
                self.controllers[controller].gain(self.now, &mut out);
                self.flush(Node::Controller(controller), out);
            }
        }
    }

    fn on_timer(&mut self, node: Node, timer: Timer, out: &mut Outbox) {
        match (node, timer) {
            (Node::Broker(member), Timer::BrokerTick) => {
                let broker = &mut self.brokers[member as usize];
                if broker.up {
                    broker.on_tick(self.now, &mut self.checker, out);
                }
            }
            (Node::Controller(index), Timer::Round) => self.controllers[index].on_round(out),
            (Node::Controller(index), Timer::CallTimeout { call }) => {
                self.controllers[index].on_timeout(self.now, call)
            }
            (Node::Client, Timer::Client) => {
                out.after(CLIENT_MS, Timer::Client);
                let masters: Vec<MemberId> = (0..GROUP_SIZE)
                    .filter(|&m| self.brokers[m as usize].is_master())
                    .collect();
                if !masters.is_empty() {
                    let target = masters[self.rng.range(0, masters.len() as u64) as usize];
                    let id = self.next_write;
                    self.next_write += 1;
                    out.send(Node::Broker(target), Msg::Write { id });
                }
            }
            _ => {}
        }
    }

    fn deliver(&mut self, from: Node, to: Node, msg: Msg, out: &mut Outbox) {
        let now = self.now;
        let variant = self.variant;
        match to {
            Node::Api => self.on_api(from, msg, out),
            Node::Controller(index) => {
                let ready = self.ready();
                self.controllers[index].on_message(now, msg, &ready, variant, out);
            }
            Node::Broker(member) => {
                let checker = &mut self.checker;
                let broker = &mut self.brokers[member as usize];
                match msg {
                    Msg::AssignRole { call, assignment } => broker.on_assign(
                        now,
                        Caller { node: from, call },
                        assignment,
                        variant,
                        checker,
                        out,
                    ),
                    Msg::QueryState { call } => {
                        broker.on_query(now, Caller { node: from, call }, variant, out)
                    }
                    Msg::Write { id } => broker.on_write(now, id, variant, checker, out),
                    Msg::Fetched { seq, answer } => {
                        broker.on_fetched(now, Answer { seq, answer }, checker, out)
                    }
                    Msg::Fetch(request) => self.on_fetch(member, request, out),
                    _ => {}
                }
            }
            Node::Client => {}
        }
    }

    /// The master answers a fetch; the checker compares the follower's log
    /// below the stream start with the master's (invariant 3).
    fn on_fetch(&mut self, member: MemberId, request: net::FetchRequest, out: &mut Outbox) {
        let follower = request.member as usize;
        let (log_end, truncations) = (request.log_end, request.truncations);
        let master = &mut self.brokers[member as usize];
        let Some(from) =
            master.answer_fetch(self.now, request, self.variant, &mut self.checker, out)
        else {
            return;
        };
        let follower_log = &self.brokers[follower].log;
        if follower_log.len() as u64 == log_end && self.brokers[follower].truncations == truncations
        {
            let master_log = &self.brokers[member as usize].log;
            self.checker.streams(
                self.now,
                follower as MemberId,
                from,
                follower_log,
                master_log,
            );
        }
    }

    fn on_api(&mut self, from: Node, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::ReadRecord { call } => out.send(
                from,
                Msg::RecordRead {
                    call,
                    stored: self.stored.clone(),
                },
            ),
            Msg::WriteRecord {
                call,
                expected,
                record,
            } => {
                // Invariant 4 counts from an election written while its
                // writer leads; a former leader's write landing late is held
                // to "not after the successor began" only.
                let by_leader =
                    matches!(from, Node::Controller(index) if self.leader == Some(index));
                let stored = (expected == self.stored.version).then(|| {
                    if record.epoch > self.stored.record.epoch {
                        self.elections += 1;
                        if by_leader {
                            self.checker.recorded(record.epoch);
                        }
                    }
                    self.stored = Stored {
                        record,
                        version: self.stored.version + 1,
                    };
                    self.stored.clone()
                });
                out.send(from, Msg::RecordWritten { call, stored });
            }
            _ => {}
        }
    }
}
