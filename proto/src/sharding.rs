//! Which queue a sharding key's messages go to. The broker (for sends without
//! a queue) and the SDK (choosing the queue, and so the broker) must agree, or
//! a key's messages would split over two queues and lose their order.

/// The queue of `key` among a topic's `queues` queues (0 queues counts as 1).
pub fn queue_for_sharding_key(key: &str, queues: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(queues.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_keep_their_queues() {
        // Fixed values: changing the hash would move every key's stored order.
        let placed: Vec<u32> = ["order-1", "order-2", "user-42", ""]
            .iter()
            .map(|k| queue_for_sharding_key(k, 8))
            .collect();
        assert_eq!(placed, vec![6, 4, 5, 2]);
        assert_eq!(queue_for_sharding_key("order-1", 1), 0);
    }
}
