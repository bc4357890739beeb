use crate::config::Settings;
use clap::Args;
#[derive(Args)]
pub struct IngestBench {}
pub async fn run(_a: IngestBench, _s: Settings) -> anyhow::Result<()> {
    Ok(())
}
