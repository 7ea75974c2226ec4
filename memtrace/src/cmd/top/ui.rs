//! Drawing `memtrace top`: the full screen (ratatui) and the batch mode's plain text, both
//! from what [`App`] computes.

use std::fmt::Write as _;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
};

use super::app::{App, Detail, HELP, Header, fmt_bytes, fmt_bytes_rate, fmt_count, fmt_rate};
use crate::export::record::EventRecord;

/// Below this the screen only says it is too small.
const MIN_WIDTH: u16 = 40;
const MIN_HEIGHT: u16 = 12;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small ({}×{}); memtrace top needs {MIN_WIDTH}×{MIN_HEIGHT} — q quits",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let header = app.header();
    let bottom = if area.height >= 30 { 10 } else { 6 };
    let [top, table, lower, status] = Layout::vertical([
        Constraint::Length(header_lines(&header).len() as u16 + 1),
        Constraint::Min(4),
        Constraint::Length(bottom),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, &header, top);
    draw_table(f, app, table);
    let [detail, failures] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(lower);
    draw_detail(f, &app.detail(), detail);
    draw_failures(f, app, failures);
    draw_status(f, app, status);
    if app.help {
        draw_help(f, area);
    }
}

/// The header as text lines (shared with batch mode).
fn header_lines(h: &Header) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<11} {:>9} {:>12} {:>9} {:>10}",
        "ALLOCATOR", "ALLOCS/S", "BYTES/S", "FAILS/S", "FAILURES"
    )];
    for a in &h.allocators {
        lines.push(format!(
            "{:<11} {:>9} {:>12} {:>9} {:>10}",
            a.allocator,
            fmt_rate(a.rate),
            fmt_bytes_rate(a.bytes_rate),
            fmt_rate(a.failures_rate),
            fmt_count(a.failures),
        ));
    }
    let mut summary = format!(
        "slab waste {} · failures {} · lost events {} · probes {}/{}",
        h.waste_percent
            .map_or_else(|| "-".to_string(), |w| format!("{w:.1}%")),
        fmt_count(h.failures),
        fmt_count(h.lost),
        h.probes_attached,
        h.probes_total
    );
    if let (Some(used), Some(total)) = (h.vmalloc_used_bytes, h.vmalloc_total_bytes) {
        let _ = write!(
            summary,
            " · vmalloc {} of {}",
            fmt_bytes(used),
            fmt_bytes(total)
        );
    }
    lines.push(summary);
    lines
}

fn draw_header(f: &mut Frame, app: &App, h: &Header, area: Rect) {
    let title = format!(
        " memtrace top — {}{} ",
        app.source,
        if app.paused { " — PAUSED" } else { "" }
    );
    let lines = header_lines(h);
    let last = lines.len() - 1;
    let text: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                Line::from(l).bold()
            } else if i == last {
                let style = if h.failures > 0.0 || h.lost > 0.0 {
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
                } else {
                    Style::default()
                };
                Line::from(Span::styled(l, style))
            } else if h.allocators[i - 1].failures > 0.0 {
                Line::from(Span::styled(l, Style::default().fg(Color::Red)))
            } else {
                Line::from(l)
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::TOP).title(title.bold())),
        area,
    );
}

fn draw_table(f: &mut Frame, app: &App, area: Rect) {
    let t = app.table();
    let widths: Vec<Constraint> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let longest = t
                .rows
                .iter()
                .map(|r| r.get(i).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .max(c.chars().count());
            if t.numeric[i] {
                Constraint::Length(longest as u16)
            } else {
                Constraint::Max(longest.min(40) as u16)
            }
        })
        .collect();
    let align = |i: usize, s: &str| {
        if t.numeric[i] {
            Line::from(s.to_string()).right_aligned()
        } else {
            Line::from(s.to_string())
        }
    };
    let header = Row::new(
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| Cell::from(align(i, c))),
    )
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let rows = t
        .rows
        .iter()
        .map(|r| Row::new(r.iter().enumerate().map(|(i, c)| Cell::from(align(i, c)))));
    let count = if t.rows.len() == t.unfiltered {
        format!("{} rows", t.rows.len())
    } else {
        format!("{} of {} rows", t.rows.len(), t.unfiltered)
    };
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(2)
        .row_highlight_style(Style::default().bg(Color::Blue).fg(Color::White))
        .block(
            Block::default()
                .borders(Borders::TOP)
                .title(format!(" {} ({count}) ", t.title).bold()),
        );
    let mut state = TableState::default().with_selected(app.selection(t.rows.len()));
    f.render_stateful_widget(table, area, &mut state);
}

/// Horizontal bars as text lines, `width` columns wide (shared with batch mode).
fn bar_lines(d: &Detail, width: usize) -> Vec<(String, bool)> {
    let label_w = d
        .bars
        .iter()
        .map(|b| b.0.chars().count())
        .max()
        .unwrap_or(0);
    let value_w = d
        .bars
        .iter()
        .map(|b| b.2.chars().count())
        .max()
        .unwrap_or(0);
    let max = d.bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let bar_w = width.saturating_sub(label_w + value_w + 3).max(1);
    let mut out: Vec<(String, bool)> = d
        .bars
        .iter()
        .enumerate()
        .map(|(i, (label, v, shown))| {
            let n = if max > 0.0 {
                ((v / max) * bar_w as f64).round() as usize
            } else {
                0
            };
            let n = if *v > 0.0 { n.max(1) } else { 0 };
            (
                format!(
                    "{label:>label_w$} {}{} {shown:>value_w$}",
                    "█".repeat(n.min(bar_w)),
                    " ".repeat(bar_w - n.min(bar_w)),
                ),
                d.highlight == Some(i),
            )
        })
        .collect();
    if let Some(n) = &d.note {
        out.push((n.clone(), false));
    }
    out
}

fn draw_detail(f: &mut Frame, d: &Detail, area: Rect) {
    let lines: Vec<Line> = bar_lines(d, area.width.saturating_sub(2) as usize)
        .into_iter()
        .map(|(l, hi)| {
            if hi {
                Line::from(l).bold()
            } else {
                Line::from(l)
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {} ", d.title))),
        area,
    );
}

fn failure_line(r: &EventRecord) -> String {
    let time = r.time.get(11..19).unwrap_or(&r.time);
    let size = match r.order {
        Some(o) => format!("order {o}"),
        None => fmt_bytes(r.bytes_requested as f64),
    };
    format!(
        "{time} {}[{}] {} {size} {} {}",
        r.comm,
        r.pid,
        r.allocator,
        r.gfp,
        r.call_site.as_deref().unwrap_or("-")
    )
}

fn draw_failures(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = app
        .failures()
        .take(area.height.saturating_sub(2) as usize)
        .map(|r| {
            Line::from(Span::styled(
                failure_line(r),
                Style::default().fg(Color::Red),
            ))
        })
        .collect();
    let body = if lines.is_empty() {
        Paragraph::new("none since memtrace top started")
    } else {
        Paragraph::new(lines)
    };
    f.render_widget(
        body.block(Block::bordered().title(" Latest failures (call site) ")),
        area,
    );
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(text) = &app.editing {
        Line::from(vec![
            Span::raw("filter: ").bold(),
            Span::raw(text.clone()),
            Span::raw("▏  Enter apply · Esc cancel"),
        ])
    } else if let Some(e) = &app.error {
        Line::from(Span::styled(
            format!("refresh failed: {e} (retrying)"),
            Style::default().fg(Color::Red),
        ))
    } else {
        Line::from(
            "q quit · Tab view · s sort · p pause · / filter · ↑↓ select · ? help".to_string(),
        )
        .style(Style::default().add_modifier(Modifier::DIM))
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let w = area.width.saturating_sub(4).min(80);
    let h = (HELP.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::raw(format!("{k:>20}  ")).bold(),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(
        Line::from("any key closes this help").style(Style::default().add_modifier(Modifier::DIM)),
    );
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" memtrace top: keys ")),
        popup,
    );
}

/// One batch-mode snapshot: the header, the table (at most `rows` rows), the selected
/// row's histogram and the latest failures, as plain text.
pub fn batch_text(app: &App, when: &str, rows: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memtrace top — {when} — {}{}",
        app.source,
        app.error
            .as_ref()
            .map_or_else(String::new, |e| format!(" — refresh failed: {e}"))
    );
    for l in header_lines(&app.header()) {
        let _ = writeln!(out, "{l}");
    }
    let t = app.table();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{} ({} of {} rows)",
        t.title,
        t.rows.len().min(rows),
        t.unfiltered
    );
    let shown: Vec<&Vec<String>> = t.rows.iter().take(rows).collect();
    let widths: Vec<usize> = (0..t.columns.len())
        .map(|i| {
            shown
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(t.columns[i].chars().count())
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths[i];
                if t.numeric[i] {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&t.columns));
    for r in shown {
        let _ = writeln!(out, "{}", line(r));
    }
    let d = app.detail();
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", d.title);
    for (l, _) in bar_lines(&d, 60) {
        let _ = writeln!(out, "  {}", l.trim_end());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Latest failures");
    let mut any = false;
    for r in app.failures().take(10) {
        any = true;
        let _ = writeln!(out, "  {}", failure_line(r));
    }
    if !any {
        let _ = writeln!(out, "  none since memtrace top started");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{
        app::{SortKey, View},
        model::Model,
    };
    use super::*;
    use crate::export::scrape::parse_exposition;
    use ratatui::{Terminal, backend::TestBackend};

    fn app() -> App {
        let text = "memtrace_callsite_allocations_total{allocator=\"kmalloc\",function=\"vmemdup_user\"} 25\n\
                    memtrace_callsite_allocated_bytes_total{allocator=\"kmalloc\",function=\"vmemdup_user\"} 25600\n\
                    memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"1024\"} 25\n\
                    memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"+Inf\"} 25\n\
                    memtrace_kmalloc_size_bytes_count{gfp=\"GFP_KERNEL\"} 25\n\
                    memtrace_kmalloc_size_bytes_sum{gfp=\"GFP_KERNEL\"} 25600\n\
                    memtrace_allocation_failures_total{allocator=\"kmalloc\",gfp=\"GFP_KERNEL\"} 1\n\
                    memtrace_page_allocations_total{order=\"0\",migratetype=\"Movable\",gfp=\"GFP_USER\"} 3\n";
        let mut app = App::new(
            "this process".into(),
            View::Callsites,
            SortKey::Rate,
            String::new(),
        );
        app.update(Model::from_samples(&parse_exposition(text)), 0.0, vec![]);
        app
    }

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..h {
            for x in 0..w {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn draws_every_view_at_every_size_without_panicking() {
        let mut app = app();
        for view in View::ALL {
            app.view = view;
            for (w, h) in [(1, 1), (10, 3), (39, 11), (40, 12), (80, 24), (250, 70)] {
                app.help = false;
                let _ = screen(&app, w, h);
                app.help = true;
                let _ = screen(&app, w, h);
            }
        }
    }

    #[test]
    fn the_screen_shows_the_table_histogram_and_highlights() {
        let app = app();
        let s = screen(&app, 120, 40);
        assert!(s.contains("vmemdup_user"), "{s}");
        assert!(s.contains("kmalloc sizes"), "{s}");
        assert!(s.contains("Latest failures"), "{s}");
        assert!(s.contains("failures 1"), "{s}");
        let tiny = screen(&app, 30, 8);
        assert!(tiny.contains("too small"), "{tiny}");
    }

    #[test]
    fn batch_text_has_header_table_and_histogram() {
        let app = app();
        let t = batch_text(&app, "now", 20);
        assert!(t.contains("memtrace top — now — this process"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("kmalloc ") && l.ends_with(" 1")),
            "{t}"
        );
        assert!(t.contains("FUNCTION"), "{t}");
        assert!(
            t.lines().any(|l| l.contains("kmalloc")
                && l.contains("vmemdup_user")
                && l.contains("25.0 KiB")),
            "{t}"
        );
        assert!(t.contains("≤ 1.0 KiB █"), "{t}");
        assert!(t.contains("none since memtrace top started"), "{t}");
    }
}
