//! Legacy file ingestion: pure logic for turning government legacy exports into bus events.
//!
//! Old municipal and ministry systems export CSV or fixed-width files in Shift_JIS (really
//! CP932), with era dates (`令和元年5月1日`), half-width katakana and full-width digits. This
//! module reads such files as a stream, maps each record to a JSON payload through a
//! declarative TOML mapping, gives each a deterministic event id, and publishes it through an
//! [`EventSink`], keeping a reject file and a resumable checkpoint. It has no NATS or gRPC
//! dependency: the adapter supplies the sink.
//!
//! # Layout
//! - [`era`] — Japanese era and Gregorian dates → ISO 8601.
//! - [`width`] — full-width/half-width folding and trimming.
//! - [`decode`] — UTF-8 / CP932 detection and decoding without replacement.
//! - `split` — raw-byte record and field splitting (exact offsets for checkpoints).
//! - [`records`] — CSV and fixed-width record readers, resumable at a byte offset.
//! - [`mapping`] — the mapping file: parse, validate, bind to a header, apply to records.
//! - [`ids`] — deterministic event ids (UUIDv8 layout over SHA-256).
//! - [`checkpoint`] — atomic checkpoint files tied to the exact input file.
//! - [`mod@ingest`] — the driver tying it together, generic over the sink.
//!
//! The mapping file format is documented in `docs/legacy-mapping.md`.

pub mod checkpoint;
pub mod decode;
pub mod era;
pub mod ids;
pub mod ingest;
pub mod mapping;
pub mod records;
mod split;
pub mod width;

pub use decode::Encoding;
pub use era::{parse_date, Date, EraError};
pub use ids::event_id;
pub use ingest::{
    ingest, EventSink, IngestError, IngestJob, IngestLimits, MappedEvent, Outcome, Progress, SinkError,
    Summary,
};
pub use mapping::{BoundMapping, FieldError, Mapped, Mapping, MappingError};
pub use records::{Layout, Position, ReaderOptions, Record, RecordReader, RowError};
pub use width::{fold_to_halfwidth, katakana_to_fullwidth, trim_spaces};
