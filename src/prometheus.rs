//! What the node's and the controller's `/metrics` share: the Prometheus text exposition of
//! families and histograms (ten buckets per decade, which a scraper can subtract between two
//! scrapes to get the distribution of any window), and the small HTTP/1.1 responder that
//! serves them (one GET per connection, on a thread of the caller's).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use hdrhistogram::Histogram;

/// A histogram of whole values from 1 to an hour of microseconds, 3 significant digits: what
/// the metrics of both processes record.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The `# HELP` and `# TYPE` lines of a family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Bucket bounds of every histogram within a decade: ten per decade, so a quantile
/// interpolated inside a bucket is within 25% of the truth (at most a bucket's width).
const BUCKET_MANTISSAS: [u64; 10] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 80];
/// Decades of bucket bounds: 1 to 80,000,000 (µs: up to 80 s; records or bytes per write).
const BUCKET_DECADES: u32 = 8;

/// The upper bounds of every histogram's buckets (`le`), ascending; `+Inf` follows them.
/// Values are whole numbers, so the first decade has only 1, 2, 3, 4, 5, 6 and 8.
fn bucket_bounds() -> Vec<u64> {
    let mut bounds: Vec<u64> = (0..BUCKET_DECADES)
        .flat_map(|decade| {
            BUCKET_MANTISSAS
                .into_iter()
                .map(move |m| m * 10u64.pow(decade) / 10)
        })
        .collect();
    bounds.dedup();
    bounds
}

/// A Prometheus histogram: cumulative buckets, sum and count. Unlike quantiles, buckets of
/// two scrapes can be subtracted, so a scraper can tell the distribution of any window.
pub(crate) fn histogram_series(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    let bounds = bucket_bounds();
    let mut counts = vec![0u64; bounds.len()];
    // One pass over what was recorded (HdrHistogram's own buckets are far finer).
    for recorded in h.iter_recorded() {
        let value = h.lowest_equivalent(recorded.value_iterated_to());
        if let Some(i) = bounds.iter().position(|&bound| value <= bound) {
            counts[i] += recorded.count_at_value();
        }
    }
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let sum = (h.mean() * h.len() as f64).round() as u64;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// Answers `GET PATH` for each of `paths` on `listener` with `render(PATH)` (Prometheus text),
/// anything else with 404, one request per connection, until the listener is shut down
/// (`shutdown(2)`: accept then fails with `EINVAL`). Blocks: run it on a thread of its own.
pub(crate) fn serve(listener: &TcpListener, paths: &[&str], render: impl Fn(&str) -> String) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => continue,
        };
        let mut request_line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Skip the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let asked = request_line
            .strip_prefix("GET ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|path| paths.iter().find(|&&p| p == path));
        let (status, body) = match asked {
            Some(path) => ("200 OK", render(path)),
            None => (
                "404 Not Found",
                format!("only GET {} are served here\n", paths.join(" and GET ")),
            ),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn histograms_have_cumulative_buckets_a_sum_and_a_count() {
        let mut h = histogram();
        for us in 1..=1_000 {
            h.record(us).unwrap();
        }
        h.record(50_000).unwrap();
        let mut out = String::new();
        histogram_series(&mut out, "m", "shard=\"0\"", &h);
        let bucket = |le: &str| -> u64 {
            let prefix = format!("m_bucket{{shard=\"0\",le=\"{le}\"}} ");
            let line = out.lines().find(|l| l.starts_with(&prefix)).expect(le);
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(bucket("1"), 1);
        assert_eq!(bucket("12"), 12);
        assert_eq!(bucket("100"), 100);
        assert_eq!(bucket("800"), 800);
        assert_eq!(bucket("1000"), 1_000);
        assert_eq!(bucket("40000"), 1_000);
        assert_eq!(bucket("50000"), 1_001);
        assert_eq!(bucket("80000000"), 1_001);
        assert_eq!(bucket("+Inf"), 1_001);
        assert!(out.contains("m_count{shard=\"0\"} 1001\n"), "{out}");
        assert!(out.contains("m_sum{shard=\"0\"} 550500\n"), "{out}");
        // Bounds ascend and the counts never go down.
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("m_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        let bounds = bucket_bounds();
        assert_eq!(counts.len(), bounds.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    }

    #[test]
    fn serves_its_paths_answers_404_otherwise_and_ends_when_shut_down() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fd = listener.as_raw_fd();
        let server = std::thread::spawn(move || {
            serve(&listener, &["/metrics", "/traces"], |path| {
                format!("at {path}\n")
            });
        });
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.ends_with("\r\n\r\nat /metrics\n"), "{metrics}");
        assert!(get(addr, "/traces").ends_with("at /traces\n"));
        let other = get(addr, "/other");
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        assert!(
            other.contains("only GET /metrics and GET /traces"),
            "{other}"
        );
        // SAFETY: shutdown(2) on the listener's descriptor, open until the thread ends.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        server.join().expect("the server thread ends");
    }
}
