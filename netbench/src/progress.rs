//! The progress line a long run keeps on stderr: step, what runs, elapsed and an estimate of
//! what is left.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    suite: &'static str,
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    pub fn new(suite: &'static str, total: usize) -> Progress {
        Progress {
            suite,
            total,
            done: 0,
            start: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let elapsed = self.start.elapsed();
        let left = if self.done > 1 {
            let per = elapsed.as_secs_f64() / (self.done - 1) as f64;
            format!(
                ", ~{} left",
                mm_ss(Duration::from_secs_f64(
                    per * (self.total + 1 - self.done) as f64
                ))
            )
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Knetbench {}: [{}/{}] {what} ({} elapsed{left})",
            self.suite,
            self.done,
            self.total,
            mm_ss(elapsed)
        );
        let _ = err.flush();
    }

    /// Ends the line.
    pub fn finish(&self) {
        eprintln!(
            "\r\x1b[2Knetbench {}: {} steps in {}",
            self.suite,
            self.done,
            mm_ss(self.start.elapsed())
        );
    }
}

fn mm_ss(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}
