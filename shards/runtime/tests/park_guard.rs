//! glommio 0.9.0's stranded-task park, and the guard that worked around it. An executor whose
//! preemption timer fired before its first task queue of a loop iteration ran parked as if it
//! had nothing to run, and slept until I/O or a timer woke it, stranding its runnable tasks
//! (decision 0003). The vendored glommio (vendor/glommio/PATCHES.md, patch 2) runs at least one
//! task before it honours a preemption, so the strand cannot happen; these tests hold it to
//! that, and keep the guard (`shardmq_shards::spawn_park_guard`, off by default since) working.

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// A preemption interval shorter than one loop iteration makes the timer fire before the first
/// queue runs on every iteration: glommio 0.9.0 never ran the main task (the test was its
/// canary); the patched one runs it, and every task after it.
#[test]
fn a_task_preempted_before_it_runs_still_runs() {
    let (tx, rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_micros(1))
        .spawn(move || async move {
            for _ in 0..1_000 {
                glommio::spawn_local(async {}).await;
            }
            let _ = tx.send(());
        })
        .expect("executor starts");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the executor ran its tasks although every iteration was preempted at once");
    executor.join().unwrap();
}

#[test]
fn the_same_executor_runs_with_a_longer_preemption_interval() {
    let (tx, rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_millis(1))
        .spawn(move || async move {
            let ms5 = Duration::from_millis(5);
            shardmq_shards::spawn_park_guard(ms5, ms5, || 0);
            for _ in 0..10_000 {
                glommio::spawn_local(async {}).await;
            }
            let _ = tx.send(());
        })
        .expect("executor starts");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("executor ran its tasks");
    executor.join().unwrap();
}

/// Counts how often a guard with a 1 ms period and a 32 ms back-off looks at its activity
/// counter in 500 ms, when the counter moves (`busy`) and when it does not.
fn guard_looks(busy: bool) -> u64 {
    use std::cell::Cell;
    use std::rc::Rc;
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let looks = Rc::new(Cell::new(0u64));
            let seen = looks.clone();
            shardmq_shards::spawn_park_guard(
                Duration::from_millis(1),
                Duration::from_millis(32),
                move || {
                    seen.set(seen.get() + 1);
                    if busy {
                        seen.get()
                    } else {
                        0
                    }
                },
            );
            glommio::timer::sleep(Duration::from_millis(500)).await;
            looks.get()
        })
        .expect("executor starts");
    executor.join().unwrap()
}

#[test]
fn the_guard_wakes_at_its_period_while_busy_and_backs_off_while_idle() {
    let idle = guard_looks(false);
    let busy = guard_looks(true);
    // Idle: 1 + 2 + 4 + 8 + 16 ms, then every 32 ms: about 20 looks in 500 ms.
    assert!(idle <= 30, "idle guard looked {idle} times");
    // Busy: every millisecond, less what a loaded machine delays.
    assert!(busy >= 100, "busy guard looked only {busy} times");
}

/// Patch 1 of the vendored glommio (PATCHES.md) replaced the `membarrier` an executor issued
/// before it parks with SeqCst fences on both sides of its sleep flag. If that ordering were
/// wrong, a send into a parking executor's channel could miss its wake-up, and the executor
/// would sleep with a message waiting. Two executors bounce a counter back and forth over
/// shared channels, one message in flight, so each side parks and must be woken for every
/// message; a lost wake stalls the bounce (no timer would end that park) and fails the bound.
#[test]
fn every_send_into_a_parked_executor_wakes_it() {
    use glommio::channels::shared_channel;
    const ROUNDS: u32 = 20_000;
    let (to_b, from_a) = shared_channel::new_bounded::<u32>(1);
    let (to_a, from_b) = shared_channel::new_bounded::<u32>(1);
    let (done, finished) = mpsc::channel();
    let a = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (tx, rx) = (to_b.connect().await, from_b.connect().await);
            for i in 0..ROUNDS {
                tx.send(i).await.expect("b is there");
                assert_eq!(rx.recv().await, Some(i + 1));
            }
            let _ = done.send(());
        })
        .expect("executor a starts");
    let b = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (rx, tx) = (from_a.connect().await, to_a.connect().await);
            while let Some(i) = rx.recv().await {
                if tx.send(i + 1).await.is_err() {
                    break;
                }
            }
        })
        .expect("executor b starts");
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("20,000 round trips between parking executors finished");
    a.join().unwrap();
    b.join().unwrap();
}
