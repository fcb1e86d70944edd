//! `dduomq lookup`

use clap::Args;
use dduomq_client::ReceivedMessage;

use super::output::{Format, print_message};
use super::target::Target;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("by").required(true).args(["id", "key"])))]
pub struct LookupArgs {
    /// Message id.
    #[arg(long)]
    pub id: Option<String>,
    /// Message key (needs --topic).
    #[arg(long, requires = "topic")]
    pub key: Option<String>,
    #[arg(long)]
    pub topic: Option<String>,
}

pub async fn run(server: &Target, format: Format, args: LookupArgs) -> anyhow::Result<()> {
    let admin = server.admin()?;
    let found = match (&args.id, &args.key) {
        (Some(id), _) => admin.lookup_by_id(id).await?,
        (None, Some(key)) => {
            admin
                .lookup_by_key(args.topic.as_deref().unwrap_or_default(), key)
                .await?
        }
        (None, None) => unreachable!("clap requires one of --id and --key"),
    };
    for m in found {
        print_message(format, &ReceivedMessage::from(m));
    }
    Ok(())
}
