//! Unit tests of the team, the thread-count settings and the claims.

use super::*;
use rayon::prelude::*;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// `team` over `ntasks` tasks on `threads` threads: how many times each task ran.
fn runs(threads: usize, ntasks: usize) -> Vec<usize> {
    let counts: Vec<AtomicUsize> = (0..ntasks).map(|_| AtomicUsize::new(0)).collect();
    team(threads, ntasks, |t| {
        counts[t].fetch_add(1, Ordering::Relaxed);
    });
    counts.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn team_runs_every_task_exactly_once() {
    for threads in [1, 2, 3, 8] {
        for ntasks in [0, 1, 2, 5, 97] {
            // From outside any pool, inside pools smaller and larger than the team, and
            // from inside a task of a busy pool.
            assert!(runs(threads, ntasks).iter().all(|&c| c == 1));
            for size in [1, 2, 4] {
                let got = pool(size).install(|| runs(threads, ntasks));
                assert!(got.iter().all(|&c| c == 1), "{threads} {ntasks} {size}");
                let nested: Vec<Vec<usize>> = pool(size).install(|| {
                    (0..6)
                        .into_par_iter()
                        .map(|_| runs(threads, ntasks))
                        .collect()
                });
                assert!(nested.iter().flatten().all(|&c| c == 1));
            }
        }
    }
}

#[test]
fn with_threads_keeps_the_call_on_the_calling_thread() {
    let me = std::thread::current().id();
    // One thread: every task runs here.
    let ids = Mutex::new(Vec::new());
    with_threads(1, || {
        assert_eq!(current_threads(), 1);
        for_each(current_threads(), 50, |_| {
            ids.lock().unwrap().push(std::thread::current().id());
        });
    });
    assert!(ids.into_inner().unwrap().iter().all(|&id| id == me));

    // Three: the caller and the library's helpers, never rayon's threads; the setting
    // ends with the call, also when it unwinds.
    let names = Mutex::new(Vec::new());
    with_threads(3, || {
        assert_eq!(current_threads(), 3);
        for_each(current_threads(), 300, |_| {
            std::thread::sleep(std::time::Duration::from_micros(50));
            let t = std::thread::current();
            names
                .lock()
                .unwrap()
                .push((t.id() == me, t.name().map(str::to_owned)));
        });
        // Nested settings apply to their own extent.
        with_threads(1, || assert_eq!(current_threads(), 1));
        assert_eq!(current_threads(), 3);
    });
    for (here, name) in names.into_inner().unwrap() {
        assert!(here || name.is_some_and(|n| n.starts_with("fastattn-")));
    }
    assert_eq!(current_threads(), rayon::current_num_threads());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_threads(3, || panic!("inside"))
    }));
    assert!(r.is_err());
    assert_eq!(current_threads(), rayon::current_num_threads());
    assert!(helper_threads() >= 2);
}

#[test]
fn nested_teams_from_many_callers_do_not_deadlock() {
    use std::sync::mpsc;
    // More callers than helpers, each running teams whose tasks run teams.
    let (tx, rx) = mpsc::channel();
    for c in 0..3 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let sum = AtomicUsize::new(0);
            for _ in 0..20 {
                with_threads(2, || {
                    for_each(2, 3, |i| {
                        for_each(2, 4, |j| {
                            std::thread::sleep(std::time::Duration::from_micros(20));
                            sum.fetch_add(i * 4 + j, Ordering::Relaxed);
                        })
                    })
                });
            }
            tx.send((c, sum.into_inner())).unwrap();
        });
    }
    for _ in 0..3 {
        let (c, sum) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("nested teams finished within 60 s");
        assert_eq!(sum, 20 * 66, "caller {c}");
    }
}

#[test]
fn a_caller_never_waits_for_helpers_that_have_not_joined() {
    // Helpers that join 2 s late: each team of short tasks is run by the caller alone and
    // returns; had the caller waited for a helper, the late one would have run some task.
    let _delay = DelayHelpers::new(std::time::Duration::from_secs(2));
    let me = std::thread::current().id();
    for _ in 0..5 {
        let ran = Mutex::new(Vec::new());
        team(2, 64, |t| {
            ran.lock().unwrap().push((t, std::thread::current().id()))
        });
        let mut ran = ran.into_inner().unwrap();
        ran.sort_by_key(|&(t, _)| t);
        assert!(ran.iter().map(|&(t, _)| t).eq(0..64), "every task once");
        assert!(
            ran.iter().all(|&(_, id)| id == me),
            "only the caller ran tasks"
        );
    }
}

/// Delays helpers for the guard's life (serialised: the delay is process-wide).
struct DelayHelpers(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

static DELAY_LOCK: Mutex<()> = Mutex::new(());

impl DelayHelpers {
    fn new(d: std::time::Duration) -> Self {
        let g = DELAY_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        set_helper_delay(d);
        DelayHelpers(g)
    }
}

impl Drop for DelayHelpers {
    fn drop(&mut self) {
        set_helper_delay(std::time::Duration::ZERO);
    }
}

#[test]
fn blocktime_parses_and_round_trips() {
    use std::time::Duration;
    assert_eq!(parse_blocktime("0"), Some(Duration::ZERO));
    assert_eq!(parse_blocktime(" 200 "), Some(Duration::from_millis(200)));
    assert_eq!(parse_blocktime("INFINITE"), Some(Duration::MAX));
    for bad in ["", "-1", "nan", "inf", "5ms"] {
        assert_eq!(parse_blocktime(bad), None, "{bad:?}");
    }
    let before = blocktime();
    set_blocktime(Duration::ZERO);
    // With helpers that sleep at once, teams still run every task once.
    for _ in 0..20 {
        assert!(runs(3, 17).iter().all(|&c| c == 1));
        std::thread::sleep(Duration::from_micros(200));
    }
    set_blocktime(Duration::MAX);
    assert_eq!(blocktime(), Duration::MAX);
    assert!(runs(3, 17).iter().all(|&c| c == 1));
    set_blocktime(before);
}

#[test]
fn try_for_each_returns_the_lowest_failing_task_at_any_thread_count() {
    for threads in [1, 2, 3, 8] {
        let r = pool(4)
            .install(|| try_for_each(threads, 200, |t| if t % 37 == 36 { Err(t) } else { Ok(()) }));
        assert_eq!(r, Err(36), "{threads} threads");
        assert_eq!(try_for_each(threads, 0, |_| Err(())), Ok(()));
    }
}

#[test]
fn chunk_helpers_cover_every_element_once_on_edge_sizes() {
    for threads in [1, 2, 3] {
        for len in [0usize, 1, 2, 7, 13, 64] {
            for chunk in [0usize, 1, 3, 8, 100] {
                let mut v = vec![usize::MAX; len];
                for_each_chunk_mut(threads, &mut v, chunk, |i, c| {
                    assert!(c.len() <= chunk.max(1));
                    c.fill(i);
                });
                let want: Vec<usize> = (0..len).map(|j| j / chunk.max(1)).collect();
                assert_eq!(v, want, "len {len} chunk {chunk}");
                // The second slice in step, shorter than the first.
                let mut a = vec![0usize; len];
                let mut b = vec![usize::MAX; len / 2];
                let r = try_for_each_chunk_mut2(threads, &mut a, chunk, &mut b, 1, |i, x, y| {
                    x.fill(i);
                    y.fill(i);
                    Ok::<(), ()>(())
                });
                assert_eq!(r, Ok(()));
                assert_eq!(a, want);
                let nb = (len / 2).min(len.div_ceil(chunk.max(1)));
                assert!(b[..nb].iter().enumerate().all(|(i, &x)| x == i));
                assert!(b[nb..].iter().all(|&x| x == usize::MAX));
            }
        }
    }
}

#[test]
fn team_propagates_a_panic_without_hanging() {
    for size in [1, 2, 3] {
        let r = pool(size).install(|| {
            std::panic::catch_unwind(|| {
                team(size.max(2), 40, |t| {
                    assert_ne!(t, 17, "task 17 fails");
                })
            })
        });
        assert!(r.is_err());
    }
}

#[test]
fn claims_initialise_each_item_once_and_publish_it() {
    const ITEMS: usize = 7;
    let claims = Claims::<ITEMS>::new();
    let inits: Vec<AtomicUsize> = (0..ITEMS).map(|_| AtomicUsize::new(0)).collect();
    // What the initialiser writes, read by every task after `ensure`: a plain store
    // through a shared pointer, as the packed B panels are.
    let mut data = vec![0usize; ITEMS];
    // SAFETY: the tasks below write disjoint elements, each before any read of it.
    let out = unsafe { SyncPtr::new(data.as_mut_ptr()) };
    let bad = AtomicUsize::new(0);
    pool(4).install(|| {
        team(4, 400, |t| {
            // Neighbouring tasks (running at the same time) need the same item, and
            // the initialiser is slow, so the others must wait for it.
            let i = (t / 8) % ITEMS;
            claims.ensure(i, || {
                inits[i].fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
                // SAFETY: only the claimant of item i writes element i.
                unsafe { out.get().add(i).write(i + 100) };
            });
            // SAFETY: element i is written before `ensure` returns, and never again.
            if unsafe { out.get().add(i).read() } != i + 100 {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    assert_eq!(bad.into_inner(), 0);
    assert!(inits.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    assert_eq!(data, (100..100 + ITEMS).collect::<Vec<_>>());
}

#[test]
fn a_claim_whose_initialiser_panics_can_be_retried() {
    let claims = Claims::<1>::new();
    let r = std::panic::catch_unwind(|| claims.ensure(0, || panic!("first try fails")));
    assert!(r.is_err());
    let mut ran = false;
    claims.ensure(0, || ran = true);
    assert!(ran);
    claims.ensure(0, || unreachable!("already initialised"));
}
