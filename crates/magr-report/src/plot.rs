//! `magnitudes.svg`: the distribution of `|w|` before and after the preprocessor for a
//! few layers, drawn as step histograms with a logarithmic count axis (plain SVG, no
//! dependency).

use std::fmt::Write as _;

use crate::LayerRecord;

const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 230.0;
const MARGIN_L: f64 = 56.0;
const MARGIN_R: f64 = 14.0;
const MARGIN_T: f64 = 30.0;
const MARGIN_B: f64 = 40.0;

/// The layers shown: the first block's q_proj and down_proj, the middle block's o_proj
/// and the last block's down_proj (those present in `layers`).
fn chosen(layers: &[LayerRecord]) -> Vec<&LayerRecord> {
    let last = layers.iter().map(|l| l.block).max().unwrap_or(0);
    let wanted = [
        (0, "q_proj"),
        (0, "down_proj"),
        (last / 2, "o_proj"),
        (last, "down_proj"),
    ];
    let mut out: Vec<&LayerRecord> = Vec::new();
    for (block, name) in wanted {
        if let Some(l) = layers.iter().find(|l| l.block == block && l.layer == name)
            && !out.iter().any(|o| std::ptr::eq(*o, l))
        {
            out.push(l);
        }
    }
    out
}

/// The SVG document (`None` when there are no layers), the preprocessor named by its
/// `label` (`MagR`).
pub fn magnitude_svg(layers: &[LayerRecord], label: &str) -> Option<String> {
    let panels = chosen(layers);
    if panels.is_empty() {
        return None;
    }
    let cols = 2;
    let rows = panels.len().div_ceil(cols);
    let (width, height) = (PANEL_W * cols as f64, PANEL_H * rows as f64 + 40.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r##"<text x="10" y="18" font-size="13">{}</text><text x="{}" y="18"><tspan fill="#888">&#9632; before {label}</tspan>  <tspan fill="#1f5fbf">&#9632; after {label}</tspan></text>"##,
        escape(&format!("Weight magnitudes before and after {label}")),
        width - 210.0,
        label = escape(label),
    );
    for (i, layer) in panels.iter().enumerate() {
        let (x0, y0) = (
            PANEL_W * (i % cols) as f64,
            40.0 + PANEL_H * (i / cols) as f64,
        );
        panel(&mut svg, layer, x0, y0);
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn panel(svg: &mut String, layer: &LayerRecord, x0: f64, y0: f64) {
    let h = &layer.magnitudes;
    let (pw, ph) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let (left, top) = (x0 + MARGIN_L, y0 + MARGIN_T);
    let peak = h
        .before
        .iter()
        .chain(&h.after)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let decades = ((peak as f64).log10().ceil()).max(1.0);
    let y = |count: u64| top + ph - ph * ((count as f64).max(1.0).log10() / decades);
    let bins = h.before.len().max(1);
    let x = |bin: usize| left + pw * bin as f64 / bins as f64;
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}">block {} {} ({} x {}): max |w| {:.4} -> {:.4}</text>"#,
        y0 + 18.0,
        layer.block,
        layer.layer,
        layer.shape[0],
        layer.shape[1],
        layer.max_abs_before,
        layer.max_abs_after
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    for d in 0..=decades as u32 {
        let yy = y(10u64.pow(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">1e{d}</text>"##,
            left + pw,
            left - 4.0,
            yy + 4.0
        );
    }
    for (frac, anchor) in [(0.0, "start"), (0.5, "middle"), (1.0, "end")] {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="{anchor}">{:.3}</text>"#,
            left + pw * frac,
            top + ph + 14.0,
            h.upper as f64 * frac
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">|w|   (count, log scale)</text>"#,
        left + pw / 2.0,
        top + ph + 30.0
    );
    for (counts, colour) in [(&h.before, "#888"), (&h.after, "#1f5fbf")] {
        let mut points = format!("{},{}", x(0), y(0));
        for (bin, &c) in counts.iter().enumerate() {
            let _ = write!(points, " {},{} {},{}", x(bin), y(c), x(bin + 1), y(c));
        }
        let _ = write!(points, " {},{}", x(bins), y(0));
        let _ = writeln!(
            svg,
            r#"<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MagnitudeHistogram;

    fn layer(block: usize, name: &str) -> LayerRecord {
        LayerRecord {
            block,
            layer: name.into(),
            shape: [4, 2],
            preprocess: None,
            max_abs_before: 2.0,
            max_abs_after: 1.0,
            magnitudes: MagnitudeHistogram::new([0.5f32, 2.0], [0.5f32, 1.0], 2.0),
            layer_loss: 0.0,
            quantize_seconds: 0.0,
            choice: None,
        }
    }

    #[test]
    fn the_plot_names_the_preprocessor_and_shows_the_chosen_layers() {
        assert_eq!(magnitude_svg(&[], "MagR"), None);
        let layers = [
            layer(0, "q_proj"),
            layer(0, "k_proj"),
            layer(3, "down_proj"),
        ];
        let svg = magnitude_svg(&layers, "A<B").unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("before and after A&lt;B") && svg.contains("after A&lt;B</tspan>"));
        // q_proj of the first block and down_proj of the last; never k_proj.
        assert!(svg.contains("block 0 q_proj (4 x 2)") && svg.contains("block 3 down_proj"));
        assert!(!svg.contains("k_proj"));
        // One polyline per histogram per panel.
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
