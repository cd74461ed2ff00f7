//! The command line of `strom serve` (and of `strom` without a subcommand).

use std::path::PathBuf;

/// What `strom serve` (and `strom` without a subcommand) takes on its command line.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file of settings with Kafka's names, e.g. `"num.partitions" = 3`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of shards (pinned cores); default: all online cores.
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// Data directory (Kafka's `log.dirs`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address (Kafka's `listeners`), e.g. 127.0.0.1:9092.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address given to clients (Kafka's `advertised.listeners`).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Any setting by its Kafka name; repeatable.
    #[arg(short = 'o', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}
