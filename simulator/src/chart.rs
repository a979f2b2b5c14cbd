//! The run as a PNG: acknowledged publishes per second (top) and publish-to-ack latency
//! p50 and p99 per second (bottom, milliseconds), with each axis's top value written in.
//! Drawn by hand into an RGB buffer, so the simulator needs no plotting stack.

use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;

use crate::stats::Second;

const W: usize = 900;
const PANEL: usize = 260;
const H: usize = 2 * PANEL + 60;
const LEFT: usize = 60;
const RIGHT: usize = 20;
const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [225, 225, 225];
const INK: [u8; 3] = [40, 40, 40];
const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];
const RED: [u8; 3] = [214, 39, 40];

struct Canvas(Vec<u8>);

impl Canvas {
    fn dot(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.dot(x as usize, y as usize, c);
            self.dot(x as usize, y as usize + 1, c);
        }
    }

    /// Text in a 3x5 pixel font, scaled 2x.
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (n, ch) in s.chars().enumerate() {
            let bits = glyph(ch);
            for row in 0..5 {
                for col in 0..3 {
                    if bits >> (14 - (row * 3 + col)) & 1 == 1 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.dot(x + n * 8 + col * 2 + dx, y + row * 2 + dy, c);
                        }
                    }
                }
            }
        }
    }

    /// One panel: series scaled to the largest value, a grid, and that value at the top.
    fn panel(&mut self, top: usize, label: &str, series: &[(&[f64], [u8; 3])]) {
        let max = series
            .iter()
            .flat_map(|(s, _)| s.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let n = series
            .iter()
            .map(|(s, _)| s.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let (x0, x1) = (LEFT as f64, (W - RIGHT) as f64);
        let (y0, y1) = ((top + PANEL) as f64, (top + 20) as f64);
        for k in 0..=4 {
            let y = y0 + (y1 - y0) * k as f64 / 4.0;
            self.line((x0, y), (x1, y), GRID);
        }
        self.line((x0, y0), (x1, y0), INK);
        self.line((x0, y0), (x0, y1), INK);
        self.text(4, top + 16, &format_value(max), INK);
        self.text(4, top + PANEL - 8, "0", INK);
        self.text(LEFT + 10, top, label, INK);
        for (s, color) in series {
            let point = |i: usize, v: f64| {
                (
                    x0 + (x1 - x0) * i as f64 / (n - 1) as f64,
                    y0 + (y1 - y0) * v / max,
                )
            };
            for i in 1..s.len() {
                self.line(point(i - 1, s[i - 1]), point(i, s[i]), *color);
            }
        }
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 3x5 glyphs, row by row from the top, most significant bit first.
fn glyph(c: char) -> u16 {
    match c {
        '0' => 0b111_101_101_101_111,
        '1' => 0b010_110_010_010_111,
        '2' => 0b111_001_111_100_111,
        '3' => 0b111_001_111_001_111,
        '4' => 0b101_101_111_001_001,
        '5' => 0b111_100_111_001_111,
        '6' => 0b111_100_111_101_111,
        '7' => 0b111_001_001_001_001,
        '8' => 0b111_101_111_101_111,
        '9' => 0b111_101_111_001_111,
        '.' => 0b000_000_000_000_010,
        '/' => 0b001_001_010_100_100,
        'a' => 0b000_111_101_111_101,
        'c' => 0b000_111_100_100_111,
        'd' => 0b001_001_111_101_111,
        'e' => 0b111_100_111_100_111,
        'k' => 0b100_101_110_101_101,
        'm' => 0b000_111_111_101_101,
        'p' => 0b111_101_111_100_100,
        's' => 0b111_100_111_001_111,
        't' => 0b010_111_010_010_011,
        'i' => 0b010_000_010_010_010,
        'l' => 0b010_010_010_010_011,
        'n' => 0b000_110_101_101_101,
        'o' => 0b000_111_101_101_111,
        'y' => 0b101_101_111_001_111,
        'u' => 0b000_101_101_101_111,
        'b' => 0b100_100_111_101_111,
        'h' => 0b100_100_111_101_101,
        ',' => 0b000_000_000_010_100,
        '(' => 0b001_010_010_010_001,
        ')' => 0b100_010_010_010_100,
        _ => 0,
    }
}

pub fn write(path: &Path, timeline: &[Second]) -> anyhow::Result<()> {
    let mut canvas = Canvas(WHITE.repeat(W * H));
    let acked: Vec<f64> = timeline.iter().map(|s| s.acked as f64).collect();
    let p50: Vec<f64> = timeline.iter().map(|s| s.p50_ms).collect();
    let p99: Vec<f64> = timeline.iter().map(|s| s.p99_ms).collect();
    canvas.panel(10, "acked/s", &[(&acked, BLUE)]);
    canvas.panel(
        PANEL + 40,
        "p50 and p99 ack latency ms",
        &[(&p50, ORANGE), (&p99, RED)],
    );
    canvas.text(LEFT, H - 12, &format!("0 to {} s", timeline.len()), INK);
    let file = std::fs::File::create(path).with_context(|| format!("chart {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), W as u32, H as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&canvas.0))
        .with_context(|| format!("chart {}", path.display()))
}
