//! `dcl count`'s loop as three overlapped stages: a thread decodes the next images while the
//! networks run on the calling thread (which owns the device), and another thread writes the
//! finished images' outputs. So on a GPU the networks are not kept waiting by PNG/JPEG/TIFF
//! decoding or by encoding overlays and TIFFs, as long as each of those takes less time per
//! image than the networks.
//!
//! Memory stays bounded: every image holds credits (its pixel count, estimated from the file's
//! header before decoding) from decoding until its outputs are written, and the images in flight
//! may hold at most `budget` credits together; an image larger than the budget waits until it is
//! alone, so a 10000x10000 image is processed exactly as without the pipeline.
use std::sync::mpsc::sync_channel;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Seconds spent in each stage (summed over items, so with overlap their sum exceeds `wall`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub decode: Duration,
    pub compute: Duration,
    pub write: Duration,
    pub wall: Duration,
}

/// The three stages and their cost estimate. `cost` may return None when unknown (the item
/// then takes the whole budget).
pub struct Stages<Cost, Dec, Comp, Wr> {
    pub cost: Cost,
    pub decode: Dec,
    pub compute: Comp,
    pub write: Wr,
}

struct Credits {
    used: Mutex<u64>,
    freed: Condvar,
    budget: u64,
}

impl Credits {
    fn acquire(&self, n: u64) -> u64 {
        let n = n.clamp(1, self.budget);
        let mut used = self.used.lock().expect("credits lock");
        while *used + n > self.budget {
            used = self.freed.wait(used).expect("credits lock");
        }
        *used += n;
        n
    }
    fn release(&self, n: u64) {
        *self.used.lock().expect("credits lock") -= n;
        self.freed.notify_all();
    }
}

/// Runs every item through decode → compute → write; returns each item's result in input order
/// and the time per stage. `done` is called (on the writing thread) as each item finishes.
pub fn run_stages<I, D, C, O, Cost, Dec, Comp, Wr>(
    items: &[I],
    budget: u64,
    stages: Stages<Cost, Dec, Comp, Wr>,
    done: impl Fn(&I, &anyhow::Result<O>) + Sync,
) -> (Vec<anyhow::Result<O>>, StageTimes)
where
    I: Sync,
    D: Send,
    C: Send,
    O: Send,
    Cost: Fn(&I) -> Option<u64> + Sync,
    Dec: Fn(&I) -> anyhow::Result<D> + Sync,
    Comp: FnMut(&I, D) -> anyhow::Result<C>,
    Wr: Fn(&I, C) -> anyhow::Result<O> + Sync,
{
    let Stages {
        cost,
        decode,
        mut compute,
        write,
    } = stages;
    let credits = Credits {
        used: Mutex::new(0),
        freed: Condvar::new(),
        budget: budget.max(1),
    };
    let t0 = Instant::now();
    let (to_compute, decoded) = sync_channel::<(anyhow::Result<D>, u64)>(1);
    let (to_write, computed) = sync_channel::<(anyhow::Result<C>, u64)>(1);
    let (results, decode_time, write_time, compute_time) = std::thread::scope(|s| {
        let decoder = s.spawn(|| {
            let mut spent = Duration::ZERO;
            for item in items {
                let held = credits.acquire(cost(item).unwrap_or(u64::MAX));
                let t = Instant::now();
                let d = decode(item);
                spent += t.elapsed();
                if to_compute.send((d, held)).is_err() {
                    break; // the compute stage stopped
                }
            }
            spent
        });
        let writer = s.spawn(|| {
            let mut spent = Duration::ZERO;
            let mut out = Vec::with_capacity(items.len());
            for (item, (c, held)) in items.iter().zip(computed) {
                let t = Instant::now();
                let r = c.and_then(|c| write(item, c));
                spent += t.elapsed();
                credits.release(held);
                done(item, &r);
                out.push(r);
            }
            (out, spent)
        });
        let mut spent = Duration::ZERO;
        for (item, (d, held)) in items.iter().zip(decoded) {
            let t = Instant::now();
            let c = d.and_then(|d| compute(item, d));
            spent += t.elapsed();
            if to_write.send((c, held)).is_err() {
                break;
            }
        }
        drop(to_write);
        let decode_time = decoder.join().expect("decoding thread panicked");
        let (out, write_time) = writer.join().expect("writing thread panicked");
        (out, decode_time, write_time, spent)
    });
    (
        results,
        StageTimes {
            decode: decode_time,
            compute: compute_time,
            write: write_time,
            wall: t0.elapsed(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread::sleep;

    #[test]
    fn results_keep_input_order_and_errors_stay_with_their_item() {
        let items: Vec<u64> = (0..20).collect();
        let seen = Mutex::new(Vec::new());
        let (out, _) = run_stages(
            &items,
            10,
            Stages {
                cost: |_: &u64| Some(1),
                decode: |&i: &u64| {
                    if i == 3 {
                        anyhow::bail!("cannot decode {i}")
                    }
                    Ok(i * 10)
                },
                compute: |&i: &u64, d: u64| {
                    if i == 7 {
                        anyhow::bail!("cannot compute {i}")
                    }
                    Ok(d + 1)
                },
                write: |&i: &u64, c: u64| {
                    if i == 11 {
                        anyhow::bail!("cannot write {i}")
                    }
                    Ok(c * 2)
                },
            },
            |&i, r| seen.lock().unwrap().push((i, r.is_ok())),
        );
        assert_eq!(out.len(), 20);
        for (i, r) in out.iter().enumerate() {
            match i {
                3 | 7 | 11 => {
                    let e = r.as_ref().unwrap_err().to_string();
                    assert!(e.ends_with(&i.to_string()), "{e}");
                }
                _ => assert_eq!(*r.as_ref().unwrap(), (i as u64 * 10 + 1) * 2),
            }
        }
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 20);
        assert!(seen.iter().enumerate().all(|(k, &(i, _))| k as u64 == i));
    }

    /// Decoding and writing overlap the compute stage: with each stage sleeping 20 ms per item,
    /// 10 items take about 10 x 20 ms plus the pipeline's fill, not 10 x 60 ms.
    #[test]
    fn stages_overlap() {
        let items: Vec<u32> = (0..10).collect();
        let nap = || {
            sleep(Duration::from_millis(20));
            Ok(())
        };
        let (out, t) = run_stages(
            &items,
            100,
            Stages {
                cost: |_: &u32| Some(1),
                decode: |_: &u32| nap(),
                compute: |_: &u32, _| nap(),
                write: |_: &u32, _| nap(),
            },
            |_, _| {},
        );
        assert!(out.iter().all(|r| r.is_ok()));
        assert!(t.compute >= Duration::from_millis(200));
        assert!(t.wall < Duration::from_millis(450), "{t:?}");
    }

    /// Runs items whose cost is their value through a budget of 10 with a slow compute stage;
    /// returns, per item, the total cost in flight once it was decoded.
    fn in_flight_at_decode(items: &[u64]) -> Vec<u64> {
        let live = AtomicU64::new(0);
        let (out, _) = run_stages(
            items,
            10,
            Stages {
                cost: |&c: &u64| Some(c),
                decode: |&c: &u64| Ok(live.fetch_add(c, Ordering::SeqCst) + c),
                compute: |_: &u64, now| {
                    sleep(Duration::from_millis(4));
                    Ok(now)
                },
                write: |&c: &u64, now| {
                    live.fetch_sub(c, Ordering::SeqCst);
                    Ok(now)
                },
            },
            |_, _| {},
        );
        out.into_iter().map(|r| r.unwrap()).collect()
    }

    /// Items in flight never hold more than the budget; an item over the budget runs alone.
    #[test]
    fn memory_budget_is_respected() {
        let seen = in_flight_at_decode(&[3, 3, 3, 50, 3, 3, 4, 4]);
        assert_eq!(seen[3], 50, "the big item ran alone: {seen:?}");
        // small items: as many in flight as the budget allows (3 x 3 <= 10), never more
        let seen = in_flight_at_decode(&[3; 12]);
        let peak = *seen.iter().max().unwrap();
        assert!((6..=9).contains(&peak), "{seen:?}");
    }
}
