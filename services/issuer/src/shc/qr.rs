//! QR codes for `shc:/` strings: encoding as the spec asks (byte segment for `shc:/`, numeric
//! segment for the digits, error correction L, version ≤ 22), rendering to PNG and SVG, and
//! decoding QR codes out of PNG images. PNG goes through the `png` crate directly so the large
//! `image` crate stays out of the build.

use qrcode::bits::Bits;
use qrcode::types::{Color, EcLevel, QrError as EncodeError, Version};
use qrcode::QrCode;

use super::numeric::{self, NumericError, SHC_PREFIX};

/// The largest QR version the spec allows for a health card.
pub const MAX_QR_VERSION: i16 = 22;

/// The light margin around the code, in modules, that the QR standard asks for.
pub const QUIET_ZONE: usize = 4;

/// Larger images are refused before decoding: no photo of a QR code needs more, and the cap
/// bounds memory on hostile input.
const MAX_DECODE_PIXELS: u64 = 40_000_000;

/// QR encoding, rendering or decoding failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// The text to encode is not a valid single-QR `shc:/` string.
    #[error("not a single-QR shc:/ string: {0}")]
    NotShc(#[from] NumericError),
    /// The data does not fit a version-22 code at error correction L.
    #[error("the card does not fit a version {MAX_QR_VERSION} QR code")]
    TooLarge,
    /// The QR library refused the data.
    #[error("QR encoding failed: {0}")]
    Encode(String),
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    PngEncode(String),
    /// The bytes are not a readable PNG image.
    #[error("not a readable PNG image: {0}")]
    BadImage(String),
    /// The image holds no readable QR code.
    #[error("no readable QR code in the image")]
    NoQrInImage,
}

/// A health card QR code, ready to render.
#[derive(Clone)]
pub struct ShcQr {
    code: QrCode,
}

impl std::fmt::Debug for ShcQr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShcQr").field("version", &self.version()).field("modules", &self.modules()).finish()
    }
}

fn encode_err(e: EncodeError) -> QrError {
    QrError::Encode(e.to_string())
}

impl ShcQr {
    /// Encodes a `shc:/…` string in the smallest version (≤ 22) that holds it at level L.
    pub fn new(shc: &str) -> Result<Self, QrError> {
        // Decoding checks the form (prefix, pairs, not chunked) before anything is drawn.
        numeric::decode(shc)?;
        let digits = shc.trim().get(SHC_PREFIX.len()..).unwrap_or_default();
        for v in 1..=MAX_QR_VERSION {
            let mut bits = Bits::new(Version::Normal(v));
            let pushed = bits
                .push_byte_data(SHC_PREFIX.as_bytes())
                .and_then(|()| bits.push_numeric_data(digits.as_bytes()))
                .and_then(|()| bits.push_terminator(EcLevel::L));
            match pushed {
                Ok(()) => {
                    return QrCode::with_bits(bits, EcLevel::L).map(|code| Self { code }).map_err(encode_err)
                }
                Err(EncodeError::DataTooLong) => continue,
                Err(e) => return Err(encode_err(e)),
            }
        }
        Err(QrError::TooLarge)
    }

    /// The QR version (1–22).
    pub fn version(&self) -> i16 {
        match self.code.version() {
            Version::Normal(v) | Version::Micro(v) => v,
        }
    }

    /// Modules per side, without the quiet zone.
    pub fn modules(&self) -> usize {
        self.code.width()
    }

    /// Pixels per side of a rendering with `module_px` pixels per module, quiet zone included.
    pub fn image_side(&self, module_px: u32) -> u32 {
        let modules = u32::try_from(self.modules() + 2 * QUIET_ZONE).unwrap_or(u32::MAX);
        modules.saturating_mul(module_px.max(1))
    }

    /// An 8-bit greyscale PNG, `module_px` pixels per module (at least 1), with the quiet zone.
    pub fn to_png(&self, module_px: u32) -> Result<Vec<u8>, QrError> {
        render_png(&self.code, module_px)
    }

    /// An SVG document (one `<path>` for the dark modules), `module_px` user units per module.
    pub fn to_svg(&self, module_px: u32) -> String {
        let px = module_px.max(1);
        self.code
            .render::<qrcode::render::svg::Color<'_>>()
            .quiet_zone(true)
            .module_dimensions(px, px)
            .build()
    }
}

/// Renders any QR code as an 8-bit greyscale PNG with the quiet zone.
pub(crate) fn render_png(code: &QrCode, module_px: u32) -> Result<Vec<u8>, QrError> {
    let scale = module_px.clamp(1, 64) as usize;
    let n = code.width();
    let colors = code.to_colors();
    let side = (n + 2 * QUIET_ZONE) * scale;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % n + QUIET_ZONE, i / n + QUIET_ZONE);
        for dy in 0..scale {
            let start = (my * scale + dy) * side + mx * scale;
            pixels[start..start + scale].fill(0);
        }
    }
    let side32 = u32::try_from(side).map_err(|e| QrError::PngEncode(e.to_string()))?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| QrError::PngEncode(e.to_string());
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(out)
}

/// Decodes every QR code found in a PNG image, as text.
pub fn decode_png(bytes: &[u8]) -> Result<Vec<String>, QrError> {
    let (width, height, grey) = png_to_grey(bytes)?;
    // rqrr is not written for hostile input; a panic in it must become an error, not a crash.
    let found = std::panic::catch_unwind(move || {
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| grey[y * width + x]);
        img.detect_grids().iter().filter_map(|g| g.decode().ok().map(|(_, text)| text)).collect::<Vec<_>>()
    })
    .map_err(|_| QrError::NoQrInImage)?;
    if found.is_empty() {
        return Err(QrError::NoQrInImage);
    }
    Ok(found)
}

/// PNG → width, height, 8-bit luminance (alpha composited on white).
fn png_to_grey(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), QrError> {
    let bad = |e: &dyn std::fmt::Display| QrError::BadImage(e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let (w, h) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(QrError::BadImage(format!("{w}x{h} pixels is too large")));
    }
    let size = reader.output_buffer_size().ok_or_else(|| QrError::BadImage("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(QrError::BadImage("indexed colour was not expanded".into())),
    };
    let stride = frame.line_size;
    let mut grey = Vec::with_capacity(width * height);
    for y in 0..height {
        let row =
            buf.get(y * stride..y * stride + width * channels).ok_or_else(|| bad(&"short image data"))?;
        for px in row.chunks_exact(channels) {
            let (lum, alpha) = match *px {
                [g] => (u32::from(g), 255),
                [g, a] => (u32::from(g), u32::from(a)),
                [r, g, b] => ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)) / 1000, 255),
                [r, g, b, a] => {
                    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)) / 1000, u32::from(a))
                }
                _ => (255, 255),
            };
            grey.push(((lum * alpha + 255 * (255 - alpha)) / 255) as u8);
        }
    }
    Ok((width, height, grey))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_version_and_refuses_bad_input() {
        let small = ShcQr::new("shc:/5676").expect("encode");
        assert_eq!(small.version(), 1);
        assert!(matches!(ShcQr::new("hello"), Err(QrError::NotShc(NumericError::NotShc))));
        // The largest allowed JWS fits version 22.
        let digits = "56".repeat(numeric::MAX_SINGLE_QR_JWS_LEN);
        let big = ShcQr::new(&format!("shc:/{digits}")).expect("fits");
        assert_eq!(big.version(), 22);
        assert_eq!(big.modules(), 17 + 4 * 22);
    }

    #[test]
    fn png_round_trip() {
        let qr = ShcQr::new("shc:/56762909524320603460292437404460").expect("encode");
        let png = qr.to_png(4).expect("png");
        assert_eq!(
            decode_png(&png).expect("decode"),
            vec!["shc:/56762909524320603460292437404460".to_string()]
        );
    }

    #[test]
    fn decode_failures() {
        assert!(matches!(decode_png(b"not a png"), Err(QrError::BadImage(_))));
        // A blank white image: valid PNG, no QR code.
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 64, 64);
        enc.set_color(png::ColorType::Grayscale);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[255u8; 64 * 64]).expect("data");
        w.finish().expect("finish");
        assert_eq!(decode_png(&out), Err(QrError::NoQrInImage));
    }
}
