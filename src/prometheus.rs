//! What the node's and the controller's `/metrics` share: the Prometheus text exposition of
//! families and histograms (ten buckets per decade, which a scraper can subtract between two
//! scrapes to get the distribution of any window; times recorded in microseconds are written
//! in seconds, as Prometheus names units: [`Recorded`]), and the HTTP server that serves them
//! (hyper, on a runtime of the caller's thread, with bounds on connections, request heads
//! and time: [`serve`]).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

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

/// What a histogram's recorded whole numbers are, and so how its bounds and sum are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Quantities in their base unit (records, bytes): written as they are.
    Units,
    /// Microseconds: written in seconds, the base unit Prometheus expects of times (a
    /// `_us` family is flagged by `promtool check metrics`, and would be by every query
    /// that mixes it with other exporters' `_seconds`).
    Micros,
}

impl Recorded {
    /// `value` in the exposition's unit, as a decimal that parses to exactly the number
    /// meant (`0.000012`, not `1.2e-5` or a float's rounding of 12 / 1e6).
    fn format(self, value: u64) -> String {
        match self {
            Recorded::Units => value.to_string(),
            Recorded::Micros => {
                let fraction = format!("{:06}", value % 1_000_000);
                let fraction = fraction.trim_end_matches('0');
                let seconds = value / 1_000_000;
                if fraction.is_empty() {
                    seconds.to_string()
                } else {
                    format!("{seconds}.{fraction}")
                }
            }
        }
    }
}

/// A Prometheus histogram of `h`, whose values are `unit`: cumulative buckets, sum and count.
/// Unlike quantiles, buckets of two scrapes can be subtracted, so a scraper can tell the
/// distribution of any window.
pub(crate) fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Histogram<u64>,
    unit: Recorded,
) {
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
    for (&bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let le = unit.format(bound);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let sum = unit.format((h.mean() * h.len() as f64).round() as u64);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// Serves `GET` of `paths` on `listener`, each answered with `render(path)` (Prometheus text),
/// until the listener is shut down; runs on the caller's thread. HTTP comes from hyper, on a
/// runtime of this thread alone, with the bounds a port open to anyone needs: at most
/// [`HTTP_CONNECTIONS_MAX`] connections at once (more are closed at once), a request head
/// of at most [`HTTP_HEAD_BYTES_MAX`] read within [`HTTP_HEAD_TIMEOUT`], and a connection's
/// whole life within [`HTTP_CONNECTION_TIMEOUT`]. One request per connection. A hand-written
/// responder served one connection at a time with no timeout and read a header line without
/// bound: one idle connection held `/metrics` from everyone, and a header with no newline
/// grew the node byte for byte (issue 15).
pub(crate) fn serve(
    listener: &TcpListener,
    paths: &'static [&'static str],
    render: impl Fn(&str) -> String + Send + Sync + 'static,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "metrics: no runtime; not served");
            return;
        }
    };
    let listener = match listener
        .try_clone()
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "metrics: the listener; not served");
            return;
        }
    };
    let render = Arc::new(render);
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let permits = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Shut down: the process stops serving metrics.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(_) => {
                    // Out of descriptors, or a connection that died queued: back off.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue; // Over the bound: closed at once.
            };
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(&request, paths, render.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP_HEAD_TIMEOUT)
                    .max_buf_size(HTTP_HEAD_BYTES_MAX)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, connection).await;
                drop(permit);
            });
        }
    });
}

/// Connections `/metrics` serves at once.
pub(crate) const HTTP_CONNECTIONS_MAX: usize = 64;
/// The largest request head read (hyper's smallest buffer).
const HTTP_HEAD_BYTES_MAX: usize = 8192;
/// How long a request head may take to arrive.
const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last, its answer's sending included.
const HTTP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The answer to `request`: `render(path)` for a GET of one of `paths`, else 404.
fn respond(
    request: &Request<Incoming>,
    paths: &[&str],
    render: &(dyn Fn(&str) -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let asked = paths.iter().find(|&&p| p == path);
    let (status, body) = match asked {
        Some(path) if request.method() == Method::GET => (StatusCode::OK, render(path)),
        _ => (
            StatusCode::NOT_FOUND,
            format!("only GET {} are served here\n", paths.join(" and GET ")),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The count of bucket `le` in the series `m{shard="0"}` of `out`.
    fn bucket(out: &str, le: &str) -> u64 {
        let prefix = format!("m_bucket{{shard=\"0\",le=\"{le}\"}} ");
        let line = out.lines().find(|l| l.starts_with(&prefix)).expect(le);
        line[prefix.len()..].parse().unwrap()
    }

    /// 1..=1000 and 50,000, recorded.
    fn recorded() -> Histogram<u64> {
        let mut h = histogram();
        for us in 1..=1_000 {
            h.record(us).unwrap();
        }
        h.record(50_000).unwrap();
        h
    }

    #[test]
    fn histograms_have_cumulative_buckets_a_sum_and_a_count() {
        let mut out = String::new();
        histogram_series(&mut out, "m", "shard=\"0\"", &recorded(), Recorded::Units);
        assert_eq!(bucket(&out, "1"), 1);
        assert_eq!(bucket(&out, "12"), 12);
        assert_eq!(bucket(&out, "100"), 100);
        assert_eq!(bucket(&out, "800"), 800);
        assert_eq!(bucket(&out, "1000"), 1_000);
        assert_eq!(bucket(&out, "40000"), 1_000);
        assert_eq!(bucket(&out, "50000"), 1_001);
        assert_eq!(bucket(&out, "80000000"), 1_001);
        assert_eq!(bucket(&out, "+Inf"), 1_001);
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

    #[test]
    fn microseconds_are_served_in_seconds_with_the_same_buckets() {
        let mut out = String::new();
        histogram_series(&mut out, "m", "shard=\"0\"", &recorded(), Recorded::Micros);
        assert_eq!(bucket(&out, "0.000001"), 1);
        assert_eq!(bucket(&out, "0.000012"), 12);
        assert_eq!(bucket(&out, "0.0008"), 800);
        assert_eq!(bucket(&out, "0.001"), 1_000);
        assert_eq!(bucket(&out, "0.05"), 1_001);
        assert_eq!(bucket(&out, "80"), 1_001);
        assert_eq!(bucket(&out, "+Inf"), 1_001);
        assert!(out.contains("m_sum{shard=\"0\"} 0.5505\n"), "{out}");
        assert!(out.contains("m_count{shard=\"0\"} 1001\n"), "{out}");
        // Every bound parses to exactly the microseconds' bound divided by a million.
        let les: Vec<f64> = out
            .lines()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .filter(|&le| le != "+Inf")
            .map(|le| le.parse().unwrap())
            .collect();
        let bounds: Vec<f64> = bucket_bounds().iter().map(|&us| us as f64 / 1e6).collect();
        assert_eq!(les, bounds);
    }

    #[test]
    fn microseconds_are_written_as_exact_decimal_seconds() {
        let cases = [
            (0, "0"),
            (1, "0.000001"),
            (12, "0.000012"),
            (1_500, "0.0015"),
            (600_000, "0.6"),
            (1_000_000, "1"),
            (80_000_000, "80"),
            (3_600_000_001, "3600.000001"),
        ];
        for (us, text) in cases {
            assert_eq!(Recorded::Micros.format(us), text);
            assert_eq!(Recorded::Units.format(us), us.to_string());
        }
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
        // An idle connection does not hold the others up (it held every later one), and a
        // head larger than the bound is refused, not read on (it grew the process byte for
        // byte).
        let idle = std::net::TcpStream::connect(addr).expect("connect");
        assert!(get(addr, "/metrics").ends_with("at /metrics\n"));
        let mut huge = std::net::TcpStream::connect(addr).expect("connect");
        let _ = huge.write_all(b"GET /metrics HTTP/1.1\r\nX-Long: ");
        let _ = huge.write_all(&vec![b'a'; 256 << 10]);
        let mut answer = String::new();
        let _ = huge.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
        drop(idle);
        // SAFETY: shutdown(2) on the listener's descriptor, open until the thread ends.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        server.join().expect("the server thread ends");
    }
}
