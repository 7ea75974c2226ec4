//! Units the subcommands read and print alike: seconds on the command line, bytes in tables.

/// A positive number of seconds (below 10^9), as `--duration` and `--interval` take it.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() && d > 0.0 && d < 1e9 => Ok(d),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn fmt_bytes(v: f64) -> String {
    match scaled_bytes(v) {
        (v, "B") => format!("{v:.0} B"),
        (v, unit) => format!("{v:.1} {unit}"),
    }
}

pub fn fmt_bytes_rate(v: f64) -> String {
    format!("{}/s", fmt_bytes(v))
}

/// `v` bytes in the largest binary unit that keeps it at 1 or more: (value, unit).
pub fn scaled_bytes(v: f64) -> (f64, &'static str) {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = if v.is_finite() { v.max(0.0) } else { 0.0 };
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    (v, UNITS[u])
}
