//! Where the CLI's commands go: a broker and the namespace (tenant) whose
//! names they use.

use dduomq_client::{Admin, ProducerBuilder, PullConsumerBuilder, PushConsumerBuilder};

/// The broker address and namespace of every client a command makes.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub namespace: String,
}

impl Target {
    pub fn admin(&self) -> dduomq_client::Result<Admin> {
        Admin::connect(&self.server)?.in_namespace(&self.namespace)
    }

    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(&self.server).namespace(&self.namespace)
    }

    pub fn push_consumer(
        &self,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> PushConsumerBuilder {
        PushConsumerBuilder::new(&self.server, group, topic).namespace(&self.namespace)
    }

    pub fn pull_consumer(
        &self,
        group: impl Into<String>,
        topics: Vec<String>,
    ) -> PullConsumerBuilder {
        PullConsumerBuilder::new(&self.server, group, topics).namespace(&self.namespace)
    }
}
