//! Compiling a protobuf schema at registration: the registered files, the files of the
//! versions it imports, the well-known types and `kakehashi/v1/options.proto`, with protox (no
//! `protoc`), into one self-contained `FileDescriptorSet`. Compiler errors keep their message
//! and are located as `file:line:col`.

use super::{OPTIONS_FILE, OPTIONS_SOURCE};
use crate::store::record::ProtoFile;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use protox::file::{File, FileResolver, GoogleFileResolver};
use std::collections::BTreeMap;

/// Why `.proto` sources were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// No files, a bad file name, or a file that clashes with an imported one.
    #[error("{0}")]
    Files(String),
    /// The compiler refused the sources (message and, when known, `file:line:col`).
    #[error("{location}{message}")]
    Compile {
        /// `file:line:col: `, or `file: `, or empty.
        location: String,
        /// The compiler's message.
        message: String,
    },
    /// The named payload message is not defined.
    #[error("message {name:?} is not defined in the files (messages: {known})")]
    UnknownMessage {
        /// The name asked for.
        name: String,
        /// The messages the registered files define.
        known: String,
    },
    /// The My Number option is on a field that is not a string.
    #[error("{0}")]
    BadOption(String),
    /// A stored descriptor set does not decode (should not happen: it was compiled here).
    #[error("stored descriptor set unusable: {0}")]
    Descriptor(String),
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Every file, imports included, encoded.
    pub descriptor_set: Vec<u8>,
    /// The payload message.
    pub message: MessageDescriptor,
}

/// Serves the registered files first, then imported versions' files, the options file and
/// the well-known types; nothing from the file system.
struct Resolver {
    own: Vec<ProtoFile>,
    imported: BTreeMap<String, String>,
    google: GoogleFileResolver,
}

impl FileResolver for Resolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if let Some(f) = self.own.iter().find(|f| f.name == name) {
            return File::from_source(name, &f.source);
        }
        if let Some(source) = self.imported.get(name) {
            return File::from_source(name, source);
        }
        if name == OPTIONS_FILE {
            return File::from_source(name, OPTIONS_SOURCE);
        }
        self.google.open_file(name)
    }
}

/// A file name as imports spell it: relative, `/`-separated `[A-Za-z0-9_.-]` segments, `.proto`.
fn valid_name(name: &str) -> bool {
    name.ends_with(".proto")
        && name.len() <= 256
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        })
}

/// Compiles `files` (with `imported`: name → source of the files of imported versions) and
/// finds `message` in them.
pub fn compile(
    files: &[ProtoFile],
    imported: &BTreeMap<String, String>,
    message: &str,
) -> Result<Compiled, ProtoError> {
    if files.is_empty() {
        return Err(ProtoError::Files("a protobuf schema needs at least one .proto file".into()));
    }
    for (i, f) in files.iter().enumerate() {
        if !valid_name(&f.name) {
            return Err(ProtoError::Files(format!(
                "file name {:?}: expected a relative path of [A-Za-z0-9_.-] segments ending in .proto",
                f.name
            )));
        }
        if f.name.starts_with("google/protobuf/") || f.name == OPTIONS_FILE || imported.contains_key(&f.name)
        {
            return Err(ProtoError::Files(format!(
                "file name {:?} is already provided (well-known types, kakehashi/v1/options.proto, or an imported version)",
                f.name
            )));
        }
        if files[..i].iter().any(|g| g.name == f.name) {
            return Err(ProtoError::Files(format!("file {:?} is given twice", f.name)));
        }
    }
    // protox keeps the resolver for the compiler's lifetime ('static): it owns copies.
    let resolver =
        Resolver { own: files.to_vec(), imported: imported.clone(), google: GoogleFileResolver::new() };
    // The sources are user input: a compiler panic must refuse them, not end the registry.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(false);
        match compiler.open_files(files.iter().map(|f| f.name.as_str())) {
            // Encoded by protox itself: prost_types' descriptors would drop custom option values.
            Ok(_) => Ok((compiler.encode_file_descriptor_set(), compiler.descriptor_pool())),
            Err(e) => Err(located(&e, files, imported)),
        }
    }));
    let (descriptor_set, pool) = run.map_err(|_| ProtoError::Compile {
        location: String::new(),
        message: "the protobuf compiler failed on these sources".into(),
    })??;
    let found = pool.get_message_by_name(message.trim_start_matches('.')).filter(|m| {
        // Only messages of the registered files may be the payload, not an import's.
        files.iter().any(|f| f.name == m.parent_file().name())
    });
    let Some(message_desc) = found else {
        let known: Vec<String> = pool
            .all_messages()
            .filter(|m| files.iter().any(|f| f.name == m.parent_file().name()) && !m.is_map_entry())
            .map(|m| m.full_name().to_string())
            .collect();
        return Err(ProtoError::UnknownMessage { name: message.to_string(), known: known.join(", ") });
    };
    check_options(&pool, files)?;
    Ok(Compiled { descriptor_set, message: message_desc })
}

/// The My Number option only makes sense on strings (the pseudonym is a string).
fn check_options(pool: &DescriptorPool, files: &[ProtoFile]) -> Result<(), ProtoError> {
    for m in pool.all_messages().filter(|m| files.iter().any(|f| f.name == m.parent_file().name())) {
        for f in m.fields() {
            if super::is_my_number(&f) && !matches!(f.kind(), prost_reflect::Kind::String) {
                return Err(ProtoError::BadOption(format!(
                    "{}: (kakehashi.v1.my_number) is only allowed on string fields",
                    f.full_name()
                )));
            }
        }
    }
    Ok(())
}

/// The compiler's message with `file:line:col` computed from the error's span in our sources.
fn located(e: &protox::Error, files: &[ProtoFile], imported: &BTreeMap<String, String>) -> ProtoError {
    use miette::Diagnostic as _;
    let message = e.to_string();
    let file = e.file().map(str::to_string);
    let offset = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let source = file.as_deref().and_then(|name| {
        files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.source.as_str())
            .or_else(|| imported.get(name).map(String::as_str))
    });
    let location = match (&file, offset, source) {
        (Some(name), Some(offset), Some(source)) => {
            let (line, col) = line_col(source, offset);
            format!("{name}:{line}:{col}: ")
        }
        (Some(name), _, _) => format!("{name}: "),
        _ => String::new(),
    };
    ProtoError::Compile { location, message }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(source.len());
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    let before = &source[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Decodes a stored descriptor set and finds its payload message.
pub fn load(descriptor_set: &[u8], message: &str) -> Result<MessageDescriptor, ProtoError> {
    let pool = DescriptorPool::decode(descriptor_set).map_err(|e| ProtoError::Descriptor(e.to_string()))?;
    pool.get_message_by_name(message)
        .ok_or_else(|| ProtoError::Descriptor(format!("message {message} missing from the descriptor set")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, source: &str) -> ProtoFile {
        ProtoFile { name: name.into(), source: source.into() }
    }

    #[test]
    fn compiles_with_well_known_types_options_and_imported_files() {
        let mut imported = BTreeMap::new();
        imported.insert(
            "common/person.proto".to_string(),
            "syntax = \"proto3\"; package common; import \"kakehashi/v1/options.proto\";\nmessage Person { string my_number = 1 [(kakehashi.v1.my_number) = true]; }".to_string(),
        );
        let files = [file(
            "v.proto",
            "syntax = \"proto3\"; package health;\nimport \"google/protobuf/timestamp.proto\";\nimport \"common/person.proto\";\nmessage V { common.Person person = 1; google.protobuf.Timestamp at = 2; }",
        )];
        let c = compile(&files, &imported, "health.V").expect("compiles");
        assert_eq!(c.message.full_name(), "health.V");
        let person = c.message.get_field_by_name("person").and_then(|f| f.kind().as_message().cloned());
        let my_number = person.and_then(|p| p.get_field_by_name("my_number")).expect("field");
        assert!(super::super::is_my_number(&my_number));
        let again = load(&c.descriptor_set, "health.V").expect("self-contained set");
        assert_eq!(again.fields().len(), 2);
        let stored = again.parent_pool().get_message_by_name("common.Person").and_then(|p| p.get_field(1));
        assert!(stored.is_some_and(|f| super::super::is_my_number(&f)), "option survives encoding");
    }

    #[test]
    fn syntax_errors_are_located() {
        let files = [file("bad.proto", "syntax = \"proto3\";\nmessage M {\n  string x = ;\n}\n")];
        let e = compile(&files, &BTreeMap::new(), "M").expect_err("refused");
        let text = e.to_string();
        assert!(text.starts_with("bad.proto:3:"), "{text}");
    }

    #[test]
    fn unknown_import_unknown_message_and_bad_option_are_refused() {
        let files =
            [file("a.proto", "syntax = \"proto3\";\nimport \"common.person/1.proto\";\nmessage M {}")];
        let e = compile(&files, &BTreeMap::new(), "M").expect_err("unknown import");
        assert!(e.to_string().contains("common.person/1.proto"), "{e}");
        assert!(e.to_string().starts_with("a.proto:2:"), "{e}");
        let files = [file("a.proto", "syntax = \"proto3\"; package p; message M {}")];
        let e = compile(&files, &BTreeMap::new(), "p.Missing").expect_err("unknown message");
        assert!(matches!(e, ProtoError::UnknownMessage { .. }), "{e}");
        let files = [file(
            "a.proto",
            "syntax = \"proto3\"; import \"kakehashi/v1/options.proto\"; message M { int32 n = 1 [(kakehashi.v1.my_number) = true]; }",
        )];
        assert!(matches!(compile(&files, &BTreeMap::new(), "M"), Err(ProtoError::BadOption(_))));
        for name in ["../x.proto", "/abs.proto", "x.txt", "google/protobuf/timestamp.proto"] {
            let files = [file(name, "syntax = \"proto3\";")];
            assert!(matches!(compile(&files, &BTreeMap::new(), "M"), Err(ProtoError::Files(_))), "{name}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for source in
            ["", "\u{0}\u{ffff}", "message", "syntax = \"proto3\"; message M { M m = 1; }", "}}}}{{{{"]
        {
            let _ = compile(&[file("x.proto", source)], &BTreeMap::new(), "M");
        }
    }
}
