//! Where the CLI's commands go: a broker, and who the commands act as there
//! (namespace, credentials, TLS).

use dduomq_client::{
    Access, Admin, AdminTimeouts, ProducerBuilder, PullConsumerBuilder, PushConsumerBuilder,
};

/// The broker address and access of every client a command makes.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub access: Access,
}

impl Target {
    pub fn admin(&self) -> dduomq_client::Result<Admin> {
        Admin::connect_as(&self.server, AdminTimeouts::default(), &self.access)
    }

    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(&self.server).access(self.access.clone())
    }

    pub fn push_consumer(
        &self,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> PushConsumerBuilder {
        PushConsumerBuilder::new(&self.server, group, topic).access(self.access.clone())
    }

    pub fn pull_consumer(
        &self,
        group: impl Into<String>,
        topics: Vec<String>,
    ) -> PullConsumerBuilder {
        PullConsumerBuilder::new(&self.server, group, topics).access(self.access.clone())
    }
}
