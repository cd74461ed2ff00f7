//! The seeded runs.

use std::collections::BTreeMap;

use crate::replication::sim::Sim;

/// Seeds and steps from `STROM_REPL_SIM_SEED` (one seed), `STROM_REPL_SIM_SEEDS` (how many,
/// from 0) and `STROM_REPL_SIM_STEPS`, or the defaults.
fn seeds_and_steps(default_seeds: u64, default_steps: u64) -> (Option<u64>, Vec<u64>, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let one = env("STROM_REPL_SIM_SEED");
    let seeds = match one {
        Some(seed) => vec![seed],
        None => (0..env("STROM_REPL_SIM_SEEDS").unwrap_or(default_seeds)).collect(),
    };
    (
        one,
        seeds,
        env("STROM_REPL_SIM_STEPS").unwrap_or(default_steps),
    )
}

/// 200 seeds of 5,000 steps each (one seed with `STROM_REPL_SIM_SEED`, more seeds with
/// `STROM_REPL_SIM_SEEDS`, other lengths with `STROM_REPL_SIM_STEPS`); every run checks the invariants after every step and converges
/// at the end. Over all default seeds every kind of fault and answer must have happened, so
/// the runs cannot silently stop exercising what they are for.
#[test]
fn seeded_runs_keep_every_invariant() {
    let (one, seeds, steps) = seeds_and_steps(200, 5_000);
    let mut total: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in seeds {
        let mut sim = Sim::new(seed);
        sim.trace = std::env::var_os("STROM_REPL_SIM_TRACE").is_some();
        sim.run(steps);
        for (name, n) in sim.stats.counts() {
            *total.entry(name).or_default() += n;
        }
    }
    println!("replication simulation totals: {total:?}");
    if one.is_none() {
        for (name, n) in &total {
            assert!(
                *n > 0,
                "no {name} in any run: the simulation lost its teeth"
            );
        }
    }
}
