//! A replicated broker group of real broker processes, with the test as its
//! controller: it assigns roles with AssignRole and records in-sync sets.

use std::time::Duration;

use dduomq_client::ClientError;
use dduomq_client::proto as pb;
use dduomq_client::proto::admin_service_client::AdminServiceClient;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::proto::replication_service_client::ReplicationServiceClient;
use dduomq_testkit::{Broker, Options, eventually};

/// Members per group in these tests.
pub const FACTOR: u32 = 3;
/// Long enough that no test's master lease lapses unless the test wants it.
pub const LONG_LEASE_MS: u64 = 120_000;
pub const TOPIC: &str = "orders";

/// Starts broker `ordinal` of a group of [`FACTOR`], with `extra` TOML lines
/// in its `[replication]` table.
pub fn start_member(ordinal: u32, extra: &str) -> Broker {
    Broker::start_with(member_options(ordinal, extra))
}

/// Starts broker `ordinal` with `store` TOML lines in its `[store]` table.
pub fn start_member_with_store(ordinal: u32, store: &str, extra: &str) -> Broker {
    Broker::start_with(Options {
        config: Some(member_config(ordinal, store, extra)),
        ..Options::default()
    })
}

/// Starts broker `ordinal` of a static group on gRPC port `port`.
pub fn start_static_member(ordinal: u32, extra: &str, port: u16) -> Broker {
    Broker::start_with(Options {
        grpc_port: Some(port),
        ..member_options(ordinal, extra)
    })
}

fn member_options(ordinal: u32, extra: &str) -> Options {
    Options {
        config: Some(member_config(ordinal, "", extra)),
        ..Options::default()
    }
}

fn member_config(ordinal: u32, store: &str, extra: &str) -> String {
    format!(
        "[store]\nbroker_id = {ordinal}\nsegment_size_bytes = 65536\nmax_record_size_bytes = 16384\n\
         {store}\n[replication]\nfactor = {FACTOR}\n{extra}\n"
    )
}

async fn admin(address: &str) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::connect(format!("http://{address}"))
        .await
        .expect("admin connection")
}

/// One AssignRole to the broker at `address`.
pub async fn assign(
    address: &str,
    req: pb::AssignRoleRequest,
) -> Result<pb::ReplicaState, tonic::Status> {
    admin(address)
        .await
        .assign_role(req)
        .await
        .map(|r| r.into_inner().state.expect("state in the reply"))
}

/// AssignRole(MASTER) for member `member` (at `address`) in `epoch`, with
/// the recorded in-sync set `in_sync` of `version` and a long lease.
pub fn master_assignment(
    address: &str,
    member: u32,
    epoch: u64,
    in_sync: &[u32],
    version: u64,
) -> pb::AssignRoleRequest {
    pb::AssignRoleRequest {
        group: 0,
        epoch,
        role: pb::ReplicaRole::Master as i32,
        master_member: member,
        master_address: address.to_string(),
        in_sync: in_sync.to_vec(),
        lease_ms: LONG_LEASE_MS,
        group_size: FACTOR,
        in_sync_version: version,
        master_store: 0,
    }
}

/// Makes member `member` (at `address`) master of `epoch` with the
/// recorded in-sync set `in_sync` of `version` (again: a renewal).
pub async fn make_master(
    address: &str,
    member: u32,
    epoch: u64,
    in_sync: &[u32],
    version: u64,
) -> pb::ReplicaState {
    assign(
        address,
        master_assignment(address, member, epoch, in_sync, version),
    )
    .await
    .expect("assign master")
}

/// Makes `b` a replica of member `master` at `master_address` in `epoch`.
pub async fn make_replica(b: &Broker, epoch: u64, master: u32, master_address: &str) {
    assign(
        &b.grpc,
        pb::AssignRoleRequest {
            group: 0,
            epoch,
            role: pb::ReplicaRole::Replica as i32,
            master_member: master,
            master_address: master_address.to_string(),
            in_sync: Vec::new(),
            lease_ms: 0,
            group_size: FACTOR,
            in_sync_version: 0,
            master_store: 0,
        },
    )
    .await
    .expect("assign replica");
}

/// What the broker at `address` reports about its group.
pub async fn state_at(address: &str) -> pb::ReplicaState {
    admin(address)
        .await
        .broker_info(pb::BrokerInfoRequest {})
        .await
        .expect("broker info")
        .into_inner()
        .replication
        .expect("a replicated broker reports its state")
}

/// What `b` reports about its group.
pub async fn state(b: &Broker) -> pb::ReplicaState {
    state_at(&b.grpc).await
}

/// Three members started with `settings`: member 0 master of epoch 1 (the
/// in-sync set's version 1), all three in sync, the others its replicas.
pub async fn start_group_of_three(settings: &str) -> [Broker; 3] {
    let members = [0, 1, 2].map(|ordinal| start_member(ordinal, settings));
    for replica in &members[1..] {
        make_replica(replica, 1, 0, &members[0].grpc).await;
    }
    make_master(&members[0].grpc, 0, 1, &[0, 1, 2], 1).await;
    members
}

/// Plays the controller once a member is gone: waits for the master of
/// epoch 1 to propose the in-sync set `members`, and records it.
pub async fn record_proposal(master: &Broker, members: &[u32]) {
    let based_on = eventually(
        Duration::from_secs(20),
        "the master's proposal of the in-sync set",
        async || {
            let s = state(master).await;
            (s.proposed_in_sync == members).then_some(s.proposal_based_on)
        },
    )
    .await;
    make_master(&master.grpc, 0, 1, members, based_on + 1).await;
}

/// The whole log of `b`, as ReadLog gives it; `None` when it was cut while
/// being read (read it again).
pub async fn whole_log(b: &Broker) -> Option<Vec<u8>> {
    let mut client = ReplicationServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("replication connection")
        .max_decoding_message_size(64 << 20);
    let mut log = Vec::new();
    loop {
        let chunk = match client
            .read_log(pb::ReadLogRequest {
                group: 0,
                start: log.len() as u64,
                max_bytes: 1 << 20,
            })
            .await
        {
            Ok(chunk) => chunk.into_inner(),
            // Cut below the part read (a former master truncating).
            Err(status) if status.code() == tonic::Code::OutOfRange => return None,
            Err(status) => panic!("read log: {status:?}"),
        };
        if chunk.data.is_empty() {
            return Some(log);
        }
        assert_eq!(chunk.start, log.len() as u64);
        log.extend_from_slice(&chunk.data);
    }
}

/// Waits until `b`'s log ends at `end`.
pub async fn wait_log_end(b: &Broker, end: u64) {
    eventually(
        Duration::from_secs(20),
        "the replica to reach the master's end",
        async || (state(b).await.log_end >= end).then_some(()),
    )
    .await;
}

/// Waits until every replica holds exactly the master's log and returns it.
/// Both are read again on each try: a master appends records of its own at
/// any time (a metadata snapshot once its log grew by a segment), so an end
/// read earlier is not where the logs meet.
pub async fn wait_same_log(master: &Broker, replicas: &[&Broker]) -> Vec<u8> {
    eventually(
        Duration::from_secs(20),
        "the replicas to hold the master's log byte for byte",
        async || {
            let log = whole_log(master).await?;
            for replica in replicas {
                if whole_log(replica).await? != log {
                    return None;
                }
            }
            Some(log)
        },
    )
    .await
}

/// One Send request of `body` to `b`, without the SDK's retries.
pub async fn send(b: &Broker, body: &[u8]) -> Result<pb::SendReceipt, ClientError> {
    let message = pb::OutgoingMessage {
        topic: TOPIC.into(),
        body: body.to_vec().into(),
        ..Default::default()
    };
    send_message(b, message).await
}

/// One Send request of `message` to `b`, without the SDK's retries.
pub async fn send_message(
    b: &Broker,
    message: pb::OutgoingMessage,
) -> Result<pb::SendReceipt, ClientError> {
    let mut client = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection");
    client
        .send(pb::SendRequest {
            messages: vec![message],
        })
        .await
        .map(|r| r.into_inner().receipts.remove(0))
        .map_err(ClientError::from)
}

/// The body of message `id` as `b` serves it.
pub async fn body_on(b: &Broker, id: &str) -> Option<Vec<u8>> {
    let found = dduomq_client::Admin::connect(&b.grpc)
        .expect("admin client")
        .lookup_by_id(id)
        .await
        .ok()?;
    found.into_iter().next().map(|m| m.body.to_vec())
}

/// Flips the bits of the byte at log position `pos` in `b`'s stopped store
/// (64 KiB segments, see [`start_member`]).
pub fn flip_byte(b: &Broker, pos: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    const SEGMENT: u64 = 65536;
    let path = b
        .data_dir()
        .join("commitlog")
        .join(format!("{:020}", pos / SEGMENT * SEGMENT));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("segment file");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(pos % SEGMENT)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(pos % SEGMENT)).unwrap();
    file.write_all(&[!byte[0]]).unwrap();
}

/// The log position a message id names (docs/architecture.md, "Message id":
/// 8 hex digits of group, then 16 of position).
pub fn position_of(message_id: &str) -> u64 {
    u64::from_str_radix(&message_id[8..24], 16).expect("hex position in the message id")
}
