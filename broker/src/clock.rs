//! The broker's clocks, behind one seam so that tests can drive time.
//!
//! Everything in the broker that reads the time calls [`now_ms`] (wall clock: record
//! timestamps, segment age, commit times) or [`mono_ms`] (monotonic: deadlines such as session
//! and rebalance timeouts). Without an installed clock both read the system clocks; a test
//! installs a [`ManualClock`] on its thread ([`install`]) and moves time with
//! [`ManualClock::advance`]. The cost on the request path is one thread-local read.

#[cfg(test)]
use std::cell::Cell;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

/// A source of time for one thread.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> i64;
    /// Milliseconds on a clock that never goes back.
    fn mono_ms(&self) -> i64;
}

thread_local! {
    static CLOCK: RefCell<Option<Rc<dyn Clock>>> = const { RefCell::new(None) };
}

/// Makes `clock` the time source of the calling thread (None: the system clocks again).
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "only tests install a clock so far")
)]
pub fn install(clock: Option<Rc<dyn Clock>>) {
    CLOCK.with(|c| *c.borrow_mut() = clock);
}

/// `read` of the installed clock, or `system` without one (no reference count is touched).
fn read(read: impl Fn(&dyn Clock) -> i64, system: fn() -> i64) -> i64 {
    CLOCK.with(|c| match &*c.borrow() {
        Some(clock) => read(clock.as_ref()),
        None => system(),
    })
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    read(|c| c.wall_ms(), system_wall_ms)
}

/// Milliseconds on a monotonic clock (since its first use in the process).
pub fn mono_ms() -> i64 {
    read(|c| c.mono_ms(), system_mono_ms)
}

fn system_wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn system_mono_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// A clock that moves only when told to (tests).
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock {
    wall: Cell<i64>,
    mono: Cell<i64>,
}

#[cfg(test)]
impl ManualClock {
    /// A clock at wall time `wall_ms` and monotonic time 0, installed on the calling thread.
    pub fn install_at(wall_ms: i64) -> Rc<ManualClock> {
        let clock = Rc::new(ManualClock {
            wall: Cell::new(wall_ms),
            mono: Cell::new(0),
        });
        install(Some(clock.clone()));
        clock
    }

    /// Moves both clocks forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.wall.set(self.wall.get() + ms);
        self.mono.set(self.mono.get() + ms);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn wall_ms(&self) -> i64 {
        self.wall.get()
    }
    fn mono_ms(&self) -> i64 {
        self.mono.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_clock_replaces_the_system_clocks_on_its_thread_only() {
        let clock = ManualClock::install_at(1_000);
        assert_eq!((now_ms(), mono_ms()), (1_000, 0));
        clock.advance(250);
        assert_eq!((now_ms(), mono_ms()), (1_250, 250));
        let other = std::thread::spawn(now_ms).join().unwrap();
        assert!(
            other > 1_600_000_000_000,
            "other threads keep the system clock"
        );
        install(None);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
