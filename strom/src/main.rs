//! `strom`: one command line for the Kafka-compatible broker (`strom-broker`) and its client
//! tools (`strom-cli`). `strom` or `strom serve` runs the broker; `strom topic|produce|consume|
//! group|cluster` are the tools; `strom completions <shell>` prints a completion script.

/// Huge allocations (a request claiming billions of elements) are mapped lazily instead of
/// aborting the process; see `strom_net::alloc`.
#[global_allocator]
static ALLOCATOR: strom_net::alloc::LazyHugeAlloc = strom_net::alloc::LazyHugeAlloc;

use clap::{Parser, Subcommand};
use strom_broker::ServeArgs;
use strom_cli as cli;

#[derive(Parser, Debug)]
#[command(
    name = "strom",
    version,
    about = "Strom: a Kafka-compatible event-streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Create, list, describe, delete and configure topics.
    Topic(cli::topic::TopicCmd),
    /// Write lines from stdin to a topic, one record per line.
    Produce(cli::produce::ProduceArgs),
    /// Print records of a topic.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    Group(cli::group::GroupCmd),
    /// Brokers, controller and versions of a cluster.
    Cluster(cli::cluster::ClusterCmd),
    /// Print a shell completion script, e.g. `strom completions bash > /etc/bash_completion.d/strom`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn serve(args: ServeArgs) -> Result<(), String> {
    strom_broker::serve(args).map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(a)) => serve(a),
        None => serve(cli.serve),
        Some(Command::Topic(c)) => cli::topic::run(c),
        Some(Command::Produce(a)) => cli::produce::run(a),
        Some(Command::Consume(a)) => cli::consume::run(a),
        Some(Command::Group(c)) => cli::group::run(c),
        Some(Command::Cluster(c)) => cli::cluster::run(c),
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "strom", &mut std::io::stdout());
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("strom: error: {e}");
        std::process::exit(1);
    }
}
