//! `--plot`: reserved and live bytes over a replayed trace, cudalloc beside PyTorch, as SVG or
//! PNG by the file's extension; the setting in the title, cudalloc's peak marked. It only
//! draws what the replay sampled.

use std::path::{Path, PathBuf};

use cudalloc::replay::ReplayReport;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The image formats `--plot` writes, by extension.
#[derive(Clone, Copy)]
enum Format {
    Svg,
    Png,
}

fn format_of(path: &Path) -> Result<Format, String> {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        other => Err(format!(
            "--plot {}: unknown image type {}; name the file .svg or .png",
            path.display(),
            other.map_or_else(|| "(no extension)".to_string(), |e| format!("'.{e}'"))
        )),
    }
}

/// Refuse a file name whose extension names no format `--plot` writes, before replaying.
pub fn check_extension(path: &Path) -> Result<(), String> {
    format_of(path).map(|_| ())
}

/// The file for the `k`-th replay: the path given for the first, then the setting in the
/// name (`mem-2-expandable_segments_True.svg`).
pub fn path_for(path: &Path, k: usize, setting: &str) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let tag: String = setting
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let ext = path
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}-{}-{tag}{ext}", k + 1))
}

/// Draw the replay's series into `path` (SVG or PNG by its extension).
pub fn write(
    path: &Path,
    r: &ReplayReport,
    setting: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    match format_of(path)? {
        Format::Svg => draw(
            SVGBackend::new(path, (1000, 560)).into_drawing_area(),
            r,
            setting,
        ),
        Format::Png => draw(
            BitMapBackend::new(path, (1000, 560)).into_drawing_area(),
            r,
            setting,
        ),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    r: &ReplayReport,
    setting: &str,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    const GIB: f64 = (1u64 << 30) as f64;
    let max_events = r.series.last().map_or(1, |p| p.event.max(1));
    let max_bytes = r
        .series
        .iter()
        .map(|p| p.reserved.max(p.live).max(p.pytorch_reserved.unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1);
    root.fill(&WHITE)?;
    let title = format!(
        "{} (device {}) [{setting}]",
        Path::new(&r.trace)
            .file_name()
            .map_or_else(|| r.trace.clone(), |f| f.to_string_lossy().into_owned()),
        r.device
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..max_events, 0f64..(max_bytes as f64 / GIB) * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("event")
        .y_desc("GiB")
        .draw()?;
    let pts = |f: &dyn Fn(&cudalloc::replay::Point) -> Option<u64>| -> Vec<(usize, f64)> {
        r.series
            .iter()
            .filter_map(|p| f(p).map(|b| (p.event, b as f64 / GIB)))
            .collect()
    };
    let live = pts(&|p| Some(p.live));
    let ours = pts(&|p| Some(p.reserved));
    let theirs = pts(&|p| p.pytorch_reserved);
    if !theirs.is_empty() {
        chart
            .draw_series(LineSeries::new(theirs, RED.stroke_width(2)))?
            .label("PyTorch reserved (traced run)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    // Where cudalloc's reserved bytes first reach their peak.
    let peak = ours
        .iter()
        .copied()
        .fold(None, |best: Option<(usize, f64)>, p| match best {
            Some(b) if b.1 >= p.1 => Some(b),
            _ => Some(p),
        });
    chart
        .draw_series(LineSeries::new(ours, BLUE.stroke_width(2)))?
        .label("cudalloc reserved")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    // Live bytes on top: the lower bound every allocator's line must stay above.
    chart
        .draw_series(LineSeries::new(live, BLACK.stroke_width(1)))?
        .label("live (allocated)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some((x, y)) = peak {
        chart.draw_series(std::iter::once(Circle::new((x, y), 5, BLUE.filled())))?;
        let h = if x > max_events / 2 {
            HPos::Right
        } else {
            HPos::Left
        };
        let font = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(h, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            format!("cudalloc peak {:.3} GiB", r.peak_reserved as f64 / GIB),
            (x, y),
            font,
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
