//! `--plot`: reserved and live bytes over a replayed trace, cudalloc beside PyTorch (SVG).

use std::path::Path;

use cudalloc::replay::ReplayReport;
use plotters::prelude::*;

/// Draw the replay's series into an SVG file.
pub fn write_svg(path: &Path, r: &ReplayReport) -> Result<(), Box<dyn std::error::Error>> {
    const GIB: f64 = (1u64 << 30) as f64;
    let max_events = r.series.last().map_or(1, |p| p.event.max(1));
    let max_bytes = r
        .series
        .iter()
        .map(|p| p.reserved.max(p.live).max(p.pytorch_reserved.unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} (device {})",
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
    chart
        .draw_series(LineSeries::new(live, BLACK.stroke_width(1)))?
        .label("live (allocated)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if !theirs.is_empty() {
        chart
            .draw_series(LineSeries::new(theirs, RED.stroke_width(2)))?
            .label("PyTorch reserved")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .draw_series(LineSeries::new(ours, BLUE.stroke_width(2)))?
        .label("cudalloc reserved")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
