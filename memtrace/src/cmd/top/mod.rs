//! `memtrace top`: a live terminal view of kernel allocation, from this process's own
//! programs or from a running daemon, plus a batch mode for scripts.

pub mod app;
pub mod model;
mod source;
pub mod ui;

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ratatui::crossterm::event::{self, Event};

use crate::{bpf::AttachPreference, export::record::Clock};
use app::{Action, App, SortKey, View};
use source::Source;

/// Flags of `memtrace top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Read a running daemon instead of attaching programs here: its address
    /// (`http://host:9701`) or its metrics URL (`http://host:9701/metrics`).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval, value_name = "SECONDS")]
    pub interval: f64,
    /// The table shown first.
    #[arg(long, value_enum, default_value_t = View::Callsites)]
    pub view: View,
    /// What the table is sorted by first.
    #[arg(long, value_enum, default_value_t = SortKey::Rate)]
    pub sort: SortKey,
    /// Show only rows containing this text (case-insensitive).
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub filter: String,
    /// Print one plain-text snapshot (rates over one interval) and exit: `--batch --iterations 1`.
    #[arg(long, conflicts_with_all = ["batch", "iterations"])]
    pub once: bool,
    /// Print plain-text snapshots instead of the full screen, one per interval, until
    /// Ctrl-C or --iterations (like `top -b`).
    #[arg(long)]
    pub batch: bool,
    /// Snapshots to print in batch mode (the first comes after one interval, with rates).
    #[arg(long, requires = "batch", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub iterations: Option<u64>,
    /// Rows of the table printed per batch snapshot.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000), value_name = "N")]
    pub rows: u64,
    /// Without --from: how to attach the probes.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// How long after SIGINT, SIGTERM or SIGHUP `top` may take to stop by itself.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Keeps SIGWINCH from this thread and the threads it starts. crossterm's event source
/// reports a resize ahead of pending key presses and, its terminal readiness being
/// edge-triggered, would then not see those keys until the next one: a last `q` would be
/// lost. No resize event is needed: every draw fits the terminal's current size.
fn block_sigwinch() {
    // SAFETY: a signal set built with the libc functions, applied to this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP (the terminal went away).
fn watch_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let kinds = [
                    SignalKind::interrupt(),
                    SignalKind::terminate(),
                    SignalKind::hangup(),
                ];
                let mut sigs = Vec::new();
                for k in kinds {
                    match signal(k) {
                        Ok(s) => sigs.push(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                let [a, b, c] = &mut sigs[..] else { return };
                tokio::select! {
                    _ = a.recv() => {}
                    _ = b.recv() => {}
                    _ = c.recv() => {}
                }
                flag.store(true, Ordering::SeqCst);
                // The main loop looks at the flag at least every 200 ms. If it has not ended
                // the process after a few seconds it is stuck (reading a terminal that went
                // away, a daemon that stopped answering): end it here, so that no `top` is
                // left running with its programs attached.
                tokio::time::sleep(STOP_GRACE).await;
                if SCREEN.load(Ordering::SeqCst) {
                    ratatui::restore();
                }
                eprintln!("memtrace top: still running {STOP_GRACE:?} after the signal; exiting");
                std::process::exit(1);
            })
        })?;
    ready_rx
        .recv()
        .context("the signal thread ended")?
        .context("cannot watch signals")?;
    Ok(stop)
}

/// Runs `memtrace top` until `q`, Ctrl-C, a signal, or the last batch iteration.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let batch = args.batch || args.once;
    let interactive = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if !batch && !interactive {
        bail!(
            "standard input/output is not a terminal; use --batch or --once for plain-text output"
        );
    }
    if !batch {
        // Before any other thread exists, so that all of them inherit it.
        block_sigwinch();
    }
    let stop = watch_signals()?;
    let mut source = Source::open(&args)?;
    let mut app = App::new(source.describe(), args.view, args.sort, args.filter.clone());
    let interval = Duration::from_secs_f64(args.interval);
    if batch {
        let iterations = if args.once { Some(1) } else { args.iterations };
        run_batch(
            &mut source,
            &mut app,
            interval,
            iterations,
            args.rows as usize,
            &stop,
        )
    } else {
        run_screen(&mut source, &mut app, interval, &stop)
    }
}

fn refresh(source: &mut Source, app: &mut App, last: &mut Instant) {
    let now = Instant::now();
    match source.poll() {
        Ok((model, failures)) => {
            app.update(model, now.duration_since(*last).as_secs_f64(), failures);
            *last = now;
        }
        Err(e) => app.error = Some(crate::sync::one_line(e.as_ref())),
    }
    app.clamp_selection();
}

/// Sleeps up to `d`, waking early when a signal arrives; false if one did.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::SeqCst)
}

fn run_batch(
    source: &mut Source,
    app: &mut App,
    interval: Duration,
    iterations: Option<u64>,
    rows: usize,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut last = Instant::now();
    refresh(source, app, &mut last);
    if let Some(e) = &app.error {
        bail!("{e}");
    }
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    while iterations.is_none_or(|n| printed < n) {
        if !sleep_unless_stopped(interval, stop) {
            break;
        }
        refresh(source, app, &mut last);
        let when = Clock::wall_now();
        if printed > 0 {
            writeln!(out)?;
        }
        // A closed pipe (`| head`) ends the output quietly.
        match out
            .write_all(ui::batch_text(app, &when, rows).as_bytes())
            .and_then(|()| out.flush())
        {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        printed += 1;
    }
    Ok(())
}

/// True while `top` owns the screen: log lines written then would tear it.
static SCREEN: AtomicBool = AtomicBool::new(false);

/// Where log lines go: standard error, except while `top` owns the screen (what goes wrong
/// then is shown on its status line instead).
pub fn log_writer() -> Box<dyn std::io::Write> {
    if SCREEN.load(Ordering::SeqCst) {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    }
}

/// Restores the terminal when dropped: on return, on error and while unwinding from a
/// panic (ratatui's own panic hook restores it before the message is printed too).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
        SCREEN.store(false, Ordering::SeqCst);
    }
}

fn run_screen(
    source: &mut Source,
    app: &mut App,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut last = Instant::now();
    refresh(source, app, &mut last);
    // The guard first: if setting up fails halfway (raw mode on, no alternate screen), the
    // terminal is still restored.
    let _guard = TerminalGuard;
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    SCREEN.store(true, Ordering::SeqCst);
    // Debug builds only: lets the tests prove that a panic restores the terminal too.
    #[cfg(debug_assertions)]
    let panic_after_draw = std::env::var_os("MEMTRACE_TOP_TEST_PANIC").is_some();
    let mut next = Instant::now() + interval;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !app.paused && Instant::now() >= next {
            refresh(source, app, &mut last);
            next = Instant::now() + interval;
        }
        terminal
            .draw(|f| ui::draw(f, app))
            .context("drawing the screen")?;
        #[cfg(debug_assertions)]
        if panic_after_draw {
            panic!("MEMTRACE_TOP_TEST_PANIC is set");
        }
        // Redraw at least every 200 ms (a resize shows promptly), and while paused too.
        let wait = if app.paused {
            Duration::from_millis(200)
        } else {
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200))
        };
        // Wait for the terminal here rather than in crossterm: on a terminal that hung up
        // (the SSH session or tmux went away) crossterm's poll and read loop forever on
        // end-of-file. Resizes need no event: every draw fits the current size.
        match wait_for_terminal(wait) {
            Input::HungUp => return Ok(()),
            Input::Quiet => continue,
            Input::Readable => {}
        }
        while !terminal_hung_up() && event::poll(Duration::ZERO).context("reading the terminal")? {
            if let Event::Key(k) = event::read().context("reading the terminal")? {
                if app.on_key(k) == Action::Quit {
                    return Ok(());
                }
                app.clamp_selection();
            }
        }
    }
}

enum Input {
    Readable,
    Quiet,
    HungUp,
}

/// Waits up to `timeout` for input on standard input, the terminal.
fn wait_for_terminal(timeout: Duration) -> Input {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    if n < 0 {
        // Interrupted by a signal: the caller looks at the stop flag.
        return Input::Quiet;
    }
    if fds.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Input::HungUp
    } else if fds.revents & libc::POLLIN != 0 {
        Input::Readable
    } else {
        Input::Quiet
    }
}

/// Whether standard input, the terminal, has hung up (or is closed).
fn terminal_hung_up() -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n > 0 && fds.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("nan").is_err());
        assert!(parse_interval("x").is_err());
    }
}
