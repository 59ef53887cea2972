//! Each issued card as files a holder or a clerk can use: `<certificate_id>.png` and `.svg` (the
//! QR code) and `<certificate_id>.smart-health-card` (the card file of the specification).

use crate::HealthCard;
use kakehashi_runtime::private_files::{create_dir, write_atomic};
use std::path::{Path, PathBuf};

/// The files of one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardFiles {
    /// QR code, PNG.
    pub png: PathBuf,
    /// QR code, SVG.
    pub svg: PathBuf,
    /// `{"verifiableCredential":[<jws>]}`.
    pub card: PathBuf,
}

/// The paths of a card's files in `dir`.
pub fn card_files(dir: &Path, certificate_id: &str) -> CardFiles {
    CardFiles {
        png: dir.join(format!("{certificate_id}.png")),
        svg: dir.join(format!("{certificate_id}.svg")),
        card: dir.join(format!("{certificate_id}.smart-health-card")),
    }
}

/// A card's files could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing card {certificate_id} to {dir}: {message}")]
pub struct OutputError {
    /// The card.
    pub certificate_id: String,
    /// The output directory.
    pub dir: PathBuf,
    /// What failed.
    pub message: String,
}

/// Writes (or rewrites, identically) the files of `card`. The PNG is written last, so its
/// presence means the others are there.
pub fn write_card(
    dir: &Path,
    certificate_id: &str,
    card: &HealthCard,
    module_px: u32,
) -> Result<CardFiles, OutputError> {
    let err =
        |message: String| OutputError { certificate_id: certificate_id.into(), dir: dir.into(), message };
    // The files hold a person's name and doses: the directory is the issuer's own.
    create_dir(dir, true).map_err(|e| err(e.to_string()))?;
    let files = card_files(dir, certificate_id);
    let qr = card.qr().map_err(|e| err(e.to_string()))?;
    let png = qr.to_png(module_px).map_err(|e| err(e.to_string()))?;
    write_atomic(&files.card, card.to_file_json().as_bytes(), true).map_err(|e| err(e.to_string()))?;
    write_atomic(&files.svg, qr.to_svg(module_px).as_bytes(), true).map_err(|e| err(e.to_string()))?;
    write_atomic(&files.png, &png, true).map_err(|e| err(e.to_string()))?;
    Ok(files)
}
