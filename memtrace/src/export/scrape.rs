//! Reading a running daemon: a minimal HTTP/1.1 GET for `http://host:port/path` (plain
//! HTTP, as the daemon serves it) and a parser of the Prometheus text exposition.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("{0:?} is not an http://host:port/path URL")]
    BadUrl(String),
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url} answered {status}")]
    Status { url: String, status: String },
    #[error("{url} sent a malformed response: {what}")]
    Malformed { url: String, what: String },
}

/// Splits `http://host:port/path` into (`host:port`, `/path`); the port defaults to 80.
pub fn split_url(url: &str) -> Result<(String, String), ScrapeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ScrapeError::BadUrl(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ScrapeError::BadUrl(url.into()));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// GETs `url` and returns the body of a 200 response.
pub fn get(url: &str, timeout: Duration) -> Result<String, ScrapeError> {
    let (status, body) = get_response(url, timeout)?;
    if status != 200 {
        return Err(ScrapeError::Status {
            url: url.into(),
            status: status.to_string(),
        });
    }
    Ok(body)
}

/// GETs `url` and returns the status code and body of whatever it answered.
pub fn get_response(url: &str, timeout: Duration) -> Result<(u16, String), ScrapeError> {
    let (authority, path) = split_url(url)?;
    let connect = |e| ScrapeError::Connect {
        url: url.into(),
        source: e,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| ScrapeError::BadUrl(url.into()))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
    s.set_read_timeout(Some(timeout)).map_err(connect)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n"
    )
    .map_err(connect)?;
    let mut raw = Vec::new();
    s.take(256 << 20).read_to_end(&mut raw).map_err(connect)?;
    let raw = String::from_utf8_lossy(&raw);
    let malformed = |what: &str| ScrapeError::Malformed {
        url: url.into(),
        what: what.into(),
    };
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let body = if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        dechunk(body).ok_or_else(|| malformed("bad chunked encoding"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n + 2..)?;
    }
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments and blank lines skipped; label values may
/// contain escaped quotes). Lines that do not parse are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], line[close + 1..].trim())
        }
        None => line.split_once(' ')?,
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
        None => (series.trim(), BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    other => v.push(other),
                },
                '"' => break i,
                c => v.push(c),
            }
        };
        out.insert(k.trim_start_matches(',').trim().to_string(), v);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9701/metrics").unwrap(),
            ("127.0.0.1:9701".into(), "/metrics".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn parses_samples_with_labels_and_escapes() {
        let text = "# HELP x y\n# TYPE x counter\nx_total 3\nh_bucket{gfp=\"GFP_KERNEL\",le=\"+Inf\"} 7\nq{a=\"say \\\"hi\\\"\",b=\"2\"} 1.5\nbad line\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].labels["le"], "+Inf");
        assert_eq!(s[1].labels["gfp"], "GFP_KERNEL");
        assert_eq!(s[2].labels["a"], "say \"hi\"");
        assert_eq!(s[2].labels["b"], "2");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
        assert!(dechunk("zz\r\n").is_none());
    }

    #[test]
    fn unreachable_is_one_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let e = get("http://127.0.0.1:1/metrics", Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach http://127.0.0.1:1/metrics"),
            "{e}"
        );
    }
}
