//! The pace of bulk enqueue: Cloud Tasks' 500/50/5 ramp, an optional fixed ceiling, and AIMD
//! on RESOURCE_EXHAUSTED.
//!
//! Cloud Tasks' "Manage scaling risks" page asks for a 500/50/5 pattern: at most 500
//! operations per second to a cold queue, then growth of no more than 50% every 5 minutes.
//! [`RateLimit`] is that plan (or a fixed rate, or none); the pacer follows it and, when Cloud
//! Tasks answers RESOURCE_EXHAUSTED, halves the rate and then recovers multiplicatively (10%
//! a second, compounded) up to the plan again.
//!
//! A small scheduler rather than `governor`: governor's quota is fixed when the limiter is
//! built, and AIMD changes the rate on every quota refusal. Here a call of `n` tasks reserves
//! `n / rate` seconds of a shared schedule (GCRA without a burst): one mutex, one
//! `sleep_until`, and a rate change applies to the next reservation.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The rate Cloud Tasks asks a cold queue to start at: 500 operations (tasks) per second.
pub const RAMP_START: u32 = 500;
/// How often the ramp grows, by at most 50%: every 5 minutes.
pub const RAMP_INTERVAL: Duration = Duration::from_secs(300);
/// Where the default ramp stops growing, in tasks per second. Past about 1000 operations a
/// second on one queue (creates plus dispatches), Google's "Manage scaling risks" guidance
/// warns of later delivery than normal; a backfill that needs more spreads over several
/// queues, or lifts this with [`RateLimit::with_ceiling`] (`enqueue-batch --rate`).
pub const DEFAULT_CEILING: u32 = 1000;
const RAMP_GROWTH: f64 = 1.5;
/// The slowest pace RESOURCE_EXHAUSTED brings a run down to, in tasks per second.
const MIN_RATE: f64 = 1.0;
/// The calls in flight all see the same overload: one decrease per this long.
const DECREASE_HOLD: Duration = Duration::from_secs(1);
/// After a decrease, the rate grows back by this factor per second (compounded), as TCP's
/// window grows multiplicatively rather than by a constant: from `rate` the plan is back
/// within `ln(plan / rate) / ln(1.1)` seconds, 7.3 s after one halving and 65 s from the
/// floor of 1 task/s up to 500/s, whatever the rate before the decrease.
const RECOVERY_PER_SECOND: f64 = 1.1;

/// How fast a bulk enqueue may create tasks, counted in tasks (a batch of 100 is 100 tasks).
///
/// The default follows Cloud Tasks' 500/50/5 guidance: 500 tasks/s, then 50% more every 5
/// minutes, counted from the first send, up to [`DEFAULT_CEILING`] (1000 tasks/s, the most
/// Google advises for one queue). Whatever the plan, a RESOURCE_EXHAUSTED answer halves
/// the current rate and it recovers by 10% a second, compounded; the plan is the ceiling the
/// recovery returns to, within `ln(plan / rate) / ln(1.1)` seconds (7.3 s after one halving).
///
/// ```
/// use std::time::Duration;
/// use cloud_tasks::RateLimit;
///
/// let ramp = RateLimit::default();
/// assert_eq!(ramp, RateLimit::ramp_from(500).with_ceiling(1000));
/// assert_eq!(ramp.planned_rate(Duration::ZERO), Some(500.0));
/// assert_eq!(ramp.planned_rate(Duration::from_secs(300)), Some(750.0));
/// assert_eq!(ramp.planned_rate(Duration::from_secs(600)), Some(1000.0));
/// // 150,000 tasks at 500/s for the first 5 minutes, 750/s after.
/// assert_eq!(ramp.time_to_send(300_000), Some(Duration::from_secs(500)));
/// assert_eq!(RateLimit::fixed(50).time_to_send(100), Some(Duration::from_secs(2)));
/// assert_eq!(RateLimit::none().time_to_send(100), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct RateLimit {
    /// Tasks per second at the start; `None`: no limit.
    start: Option<f64>,
    /// The rate never planned above this.
    ceiling: f64,
    ramp: bool,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::recommended()
    }
}

impl RateLimit {
    /// The default: Cloud Tasks' ramp from [`RAMP_START`] up to [`DEFAULT_CEILING`].
    pub const fn recommended() -> Self {
        Self {
            start: Some(at_least_one(RAMP_START)),
            ceiling: at_least_one(DEFAULT_CEILING),
            ramp: true,
        }
    }

    /// Starts at `tasks_per_second` (at least 1) and grows by 50% every 5 minutes, without a
    /// ceiling unless [`RateLimit::with_ceiling`] sets one.
    pub const fn ramp_from(tasks_per_second: u32) -> Self {
        Self {
            start: Some(at_least_one(tasks_per_second)),
            ceiling: f64::INFINITY,
            ramp: true,
        }
    }

    /// Always `tasks_per_second` (at least 1): no ramp.
    pub const fn fixed(tasks_per_second: u32) -> Self {
        let rate = at_least_one(tasks_per_second);
        Self {
            start: Some(rate),
            ceiling: rate,
            ramp: false,
        }
    }

    /// No limit of its own, for emulators and tests: calls go out as fast as `concurrency`
    /// allows until Cloud Tasks answers RESOURCE_EXHAUSTED, after which the rate is half the
    /// rate achieved then, recovering by 10% a second.
    pub const fn none() -> Self {
        Self {
            start: None,
            ceiling: f64::INFINITY,
            ramp: false,
        }
    }

    /// Never more than `tasks_per_second` (at least 1); a ramp that would start above it
    /// starts at it.
    pub fn with_ceiling(mut self, tasks_per_second: u32) -> Self {
        let ceiling = at_least_one(tasks_per_second);
        self.ceiling = ceiling;
        self.start = Some(self.start.map_or(ceiling, |start| start.min(ceiling)));
        self
    }

    /// The planned rate `elapsed` after the start, in tasks per second, before any
    /// RESOURCE_EXHAUSTED; `None` without a limit.
    pub fn planned_rate(&self, elapsed: Duration) -> Option<f64> {
        let start = self.start?;
        if !self.ramp {
            return Some(start);
        }
        let steps = elapsed.as_secs() / RAMP_INTERVAL.as_secs();
        let growth = RAMP_GROWTH.powi(i32::try_from(steps).unwrap_or(i32::MAX));
        Some((start * growth).min(self.ceiling))
    }

    /// How long sending `tasks` takes at the planned rate (no quota refusals, no latency):
    /// the estimate `cloud-tasks enqueue-batch --dry-run` prints; `None` without a limit.
    pub fn time_to_send(&self, tasks: u64) -> Option<Duration> {
        let mut left = tasks as f64;
        let mut elapsed = Duration::ZERO;
        loop {
            let rate = self.planned_rate(elapsed)?;
            let in_step = rate * RAMP_INTERVAL.as_secs_f64();
            let constant = !self.ramp || rate >= self.ceiling;
            if constant || left <= in_step {
                return Some(elapsed + Duration::from_secs_f64(left / rate));
            }
            left -= in_step;
            elapsed += RAMP_INTERVAL;
        }
    }
}

/// Tasks per second as a rate, at least 1.
#[allow(
    clippy::cast_lossless,
    reason = "`f64::from` is not const; every u32 is exact in an f64"
)]
const fn at_least_one(tasks_per_second: u32) -> f64 {
    if tasks_per_second == 0 {
        1.0
    } else {
        tasks_per_second as f64
    }
}

/// The shared pace of one bulk enqueue: every call reserves its tasks' share of time.
#[derive(Debug)]
pub(crate) struct Pacer {
    limit: RateLimit,
    state: Mutex<PaceState>,
}

#[derive(Debug)]
struct PaceState {
    /// The first send: the ramp's clock starts there, not when the pacer is built (a caller
    /// may build the enqueuer long before it has tasks).
    started: Option<Instant>,
    /// The current rate: the plan, or less after RESOURCE_EXHAUSTED; infinite without a limit.
    rate: f64,
    /// After a decrease, until the rate is back at the plan.
    recovering: bool,
    last_update: Instant,
    last_decrease: Option<Instant>,
    /// When the next call may start.
    next_free: Instant,
    /// Tasks granted since `window_start`, and the rate of the last full second: what a run
    /// without a limit achieved when it is first refused.
    window_start: Instant,
    window_tasks: f64,
    measured: f64,
}

impl Pacer {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            limit,
            state: Mutex::new(PaceState {
                started: None,
                rate: limit.planned_rate(Duration::ZERO).unwrap_or(f64::INFINITY),
                recovering: false,
                last_update: now,
                last_decrease: None,
                next_free: now,
                window_start: now,
                window_tasks: 0.0,
                measured: 0.0,
            }),
        }
    }

    /// Waits until `tasks` more tasks may be sent.
    pub(crate) async fn acquire(&self, tasks: usize) {
        self.acquire_before(tasks, None).await;
    }

    /// Waits until `tasks` more tasks may be sent, if their turn comes before `deadline`;
    /// otherwise returns `false` at once and reserves nothing, so a call that could not be
    /// sent in time holds no one else's turn.
    pub(crate) async fn acquire_before(&self, tasks: usize, deadline: Option<Instant>) -> bool {
        let start = {
            let mut state = self.lock();
            let now = Instant::now();
            state.started.get_or_insert(now);
            state.update(now, &self.limit);
            if state.rate.is_infinite() {
                state.count(now, tasks as f64);
                return true;
            }
            crate::telemetry::pace(state.rate);
            let start = state.next_free.max(now);
            if deadline.is_some_and(|deadline| start >= deadline) {
                return false;
            }
            state.count(now, tasks as f64);
            state.next_free = start + Duration::from_secs_f64(tasks as f64 / state.rate);
            start
        };
        tokio::time::sleep_until(start).await;
        true
    }

    /// The most tasks one call should carry: one second's worth at the current rate (at
    /// least 1), so a slow rate is not sent in bursts of a whole batch.
    pub(crate) fn tasks_per_call(&self, most: usize) -> usize {
        self.current_rate().map_or(most, |rate| {
            // `as` saturates; a rate is at least 1.
            let per_second = rate.floor() as usize;
            per_second.clamp(1, most)
        })
    }

    /// Cloud Tasks refused a call for quota: halve the rate (once per [`DECREASE_HOLD`]).
    pub(crate) fn exhausted(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        state.update(now, &self.limit);
        if state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < DECREASE_HOLD)
        {
            return;
        }
        let before = if state.rate.is_finite() {
            state.rate
        } else {
            let elapsed = now.duration_since(state.window_start).as_secs_f64();
            let current = if elapsed > 0.0 {
                state.window_tasks / elapsed
            } else {
                0.0
            };
            state.measured.max(current)
        };
        state.rate = (before / 2.0).max(MIN_RATE);
        state.recovering = true;
        state.last_decrease = Some(now);
        tracing::info!(rate = state.rate, "RESOURCE_EXHAUSTED: enqueue rate halved");
    }

    /// The current rate in tasks per second; `None` without a limit.
    pub(crate) fn current_rate(&self) -> Option<f64> {
        let mut state = self.lock();
        state.update(Instant::now(), &self.limit);
        state.rate.is_finite().then_some(state.rate)
    }

    fn lock(&self) -> MutexGuard<'_, PaceState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PaceState {
    /// Follows the plan, or recovers towards it after a decrease.
    fn update(&mut self, now: Instant, limit: &RateLimit) {
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |started| now.duration_since(started));
        let planned = limit.planned_rate(elapsed).unwrap_or(f64::INFINITY);
        let dt = now.duration_since(self.last_update).as_secs_f64();
        self.last_update = now;
        if self.recovering {
            self.rate *= RECOVERY_PER_SECOND.powf(dt);
            if self.rate >= planned {
                self.rate = planned;
                self.recovering = false;
            }
        } else {
            self.rate = planned;
        }
    }

    fn count(&mut self, now: Instant, tasks: f64) {
        let elapsed = now.duration_since(self.window_start).as_secs_f64();
        if elapsed >= 1.0 {
            self.measured = self.window_tasks / elapsed;
            self.window_start = now;
            self.window_tasks = 0.0;
        }
        self.window_tasks += tasks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends batches of 100 as fast as the pacer lets through for `run`, and returns how many
    /// tasks went out in each 5-minute step.
    async fn tasks_per_step(pacer: &Pacer, run: Duration) -> Vec<u64> {
        let started = Instant::now();
        let mut per_step = Vec::new();
        loop {
            pacer.acquire(100).await;
            let elapsed = started.elapsed();
            if elapsed >= run {
                return per_step;
            }
            let step = usize::try_from(elapsed.as_secs() / RAMP_INTERVAL.as_secs()).unwrap();
            if per_step.len() <= step {
                per_step.resize(step + 1, 0);
            }
            per_step[step] += 100;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_ramp_starts_at_500_per_second_and_grows_50_percent_every_5_minutes() {
        let pacer = Pacer::new(RateLimit::default());
        let started = Instant::now();
        // The first second: 500 tasks, in calls spaced 0.2 s apart.
        let mut first_second = 0;
        while started.elapsed() < Duration::from_secs(1) {
            pacer.acquire(100).await;
            if started.elapsed() < Duration::from_secs(1) {
                first_second += 100;
            }
        }
        assert_eq!(first_second, 500);

        let pacer = Pacer::new(RateLimit::ramp_from(RAMP_START));
        let per_step = tasks_per_step(&pacer, Duration::from_secs(20 * 60)).await;
        let rates: Vec<f64> = per_step
            .iter()
            .map(|tasks| *tasks as f64 / RAMP_INTERVAL.as_secs_f64())
            .collect();
        // 500, 750, 1125, 1687.5 tasks/s, within one call of 100 per step.
        for (step, rate) in rates.iter().enumerate() {
            let planned = 500.0 * 1.5_f64.powi(i32::try_from(step).unwrap());
            assert!(
                (rate - planned).abs() <= 100.0 / 300.0 + 1e-9,
                "step {step}: {rate} tasks/s against {planned}: {rates:?}"
            );
        }
        assert_eq!(rates.len(), 4);
    }

    /// The default stops growing at 1000 tasks/s: 500, 750, then 1000 from the tenth minute.
    #[tokio::test(start_paused = true)]
    async fn the_default_ramp_stops_at_1000_per_second() {
        let pacer = Pacer::new(RateLimit::default());
        let per_step = tasks_per_step(&pacer, Duration::from_secs(20 * 60)).await;
        let rates: Vec<f64> = per_step
            .iter()
            .map(|tasks| *tasks as f64 / RAMP_INTERVAL.as_secs_f64())
            .collect();
        for (rate, planned) in rates.iter().zip([500.0, 750.0, 1000.0, 1000.0]) {
            assert!((rate - planned).abs() <= 100.0 / 300.0 + 1e-9, "{rates:?}");
        }
        assert_eq!(rates.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ceiling_stops_the_ramp_and_fixed_has_none() {
        let capped = RateLimit::ramp_from(500).with_ceiling(800);
        assert_eq!(capped.planned_rate(Duration::from_secs(3600)), Some(800.0));
        assert_eq!(
            RateLimit::fixed(200).planned_rate(Duration::from_secs(3600)),
            Some(200.0)
        );
        assert_eq!(
            RateLimit::ramp_from(500)
                .with_ceiling(100)
                .planned_rate(Duration::ZERO),
            Some(100.0)
        );
        let pacer = Pacer::new(RateLimit::fixed(200));
        let per_step = tasks_per_step(&pacer, Duration::from_secs(600)).await;
        assert_eq!(per_step, [60_000, 60_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn resource_exhausted_halves_the_rate_once_per_second_and_it_recovers_multiplicatively() {
        let pacer = Pacer::new(RateLimit::fixed(1000));
        assert_eq!(pacer.current_rate(), Some(1000.0));
        pacer.exhausted();
        pacer.exhausted();
        assert_eq!(pacer.current_rate(), Some(500.0), "one decrease per second");
        tokio::time::advance(Duration::from_secs(1)).await;
        // +10% a second, compounded.
        let rate = pacer.current_rate().unwrap();
        assert!((rate - 550.0).abs() < 1e-6, "{rate}");
        // One halving is made up within ln 2 / ln 1.1 = 7.3 s.
        tokio::time::advance(Duration::from_millis(6300)).await;
        assert_eq!(
            pacer.current_rate(),
            Some(1000.0),
            "back at the plan, not above"
        );
    }

    /// Cascading halvings down to the floor of 1 task/s: the plan is back within
    /// ln(1000) / ln(1.1) = 72.5 s, not the 8 minutes additive recovery took.
    #[tokio::test(start_paused = true)]
    async fn recovery_from_the_floor_takes_the_stated_bound() {
        let pacer = Pacer::new(RateLimit::fixed(1000));
        // A halving a second (each second regaining 10%) reaches the floor within 15.
        for _ in 0..15 {
            pacer.exhausted();
            tokio::time::advance(DECREASE_HOLD).await;
        }
        pacer.exhausted();
        assert_eq!(pacer.current_rate(), Some(MIN_RATE));
        let bound = 1000_f64.ln() / RECOVERY_PER_SECOND.ln();
        tokio::time::advance(Duration::from_secs_f64(bound - 1.0)).await;
        assert!(pacer.current_rate() < Some(1000.0), "not before the bound");
        tokio::time::advance(Duration::from_secs_f64(bound.ceil() - (bound - 1.0))).await;
        assert_eq!(pacer.current_rate(), Some(1000.0));
    }

    /// The ramp counts from the first send: an enqueuer built ten minutes before its first
    /// task starts at 500/s, not 1125/s.
    #[tokio::test(start_paused = true)]
    async fn the_ramp_starts_at_the_first_send() {
        let pacer = Pacer::new(RateLimit::default());
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(pacer.current_rate(), Some(500.0));
        pacer.acquire(1).await;
        tokio::time::advance(RAMP_INTERVAL).await;
        assert_eq!(pacer.current_rate(), Some(750.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_carries_at_most_one_second_of_the_rate() {
        assert_eq!(Pacer::new(RateLimit::fixed(30)).tasks_per_call(100), 30);
        assert_eq!(Pacer::new(RateLimit::fixed(500)).tasks_per_call(100), 100);
        assert_eq!(Pacer::new(RateLimit::none()).tasks_per_call(100), 100);
        let pacer = Pacer::new(RateLimit::fixed(3));
        pacer.exhausted();
        pacer.exhausted();
        assert_eq!(pacer.tasks_per_call(100), 1);
    }

    /// A turn that would come after the deadline is not taken, so it delays no one.
    #[tokio::test(start_paused = true)]
    async fn a_turn_after_the_deadline_is_not_reserved() {
        let pacer = Pacer::new(RateLimit::fixed(1));
        pacer.acquire(5).await;
        let soon = Instant::now() + Duration::from_secs(2);
        assert!(!pacer.acquire_before(1, Some(soon)).await);
        let started = Instant::now();
        assert!(pacer.acquire_before(1, None).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "the refused turn took nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_the_first_refusal_halves_the_achieved_rate() {
        let pacer = Pacer::new(RateLimit::none());
        assert_eq!(pacer.current_rate(), None);
        for _ in 0..30 {
            pacer.acquire(100).await;
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // 1000 tasks/s achieved.
        pacer.exhausted();
        let rate = pacer.current_rate().unwrap();
        assert!((rate - 500.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn the_estimate_follows_the_ramp() {
        let ramp = RateLimit::ramp_from(RAMP_START);
        assert_eq!(ramp.time_to_send(0), Some(Duration::ZERO));
        assert_eq!(ramp.time_to_send(500), Some(Duration::from_secs(1)));
        // 150k + 225k in the first 10 minutes, then 1125/s.
        assert_eq!(
            ramp.time_to_send(375_000 + 112_500),
            Some(Duration::from_secs(700))
        );
        // The default: 1000/s from the tenth minute on.
        assert_eq!(
            RateLimit::default().time_to_send(375_000 + 100_000),
            Some(Duration::from_secs(700))
        );
        let capped = RateLimit::ramp_from(500).with_ceiling(600);
        assert_eq!(
            capped.time_to_send(150_000 + 60_000),
            Some(Duration::from_secs(400))
        );
    }
}
