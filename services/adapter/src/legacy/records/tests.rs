use std::io::Cursor as IoCursor;

use super::*;

fn cp932(s: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(s);
    assert!(!unmappable, "test text must be encodable in CP932");
    bytes.into_owned()
}

fn csv_options(encoding: Encoding, header: bool) -> ReaderOptions {
    ReaderOptions {
        layout: Layout::Csv { delimiter: b',' },
        encoding,
        header,
        expected_columns: None,
        max_row_bytes: 4096,
        max_fields: 64,
    }
}

fn open(bytes: &[u8], options: ReaderOptions) -> RecordReader<IoCursor<Vec<u8>>> {
    match RecordReader::open(IoCursor::new(bytes.to_vec()), options, None) {
        Ok(r) => r,
        Err(e) => panic!("open failed: {e}"),
    }
}

fn ok(item: Option<Result<Record, RowError>>) -> Record {
    match item {
        Some(Ok(r)) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn cp932_csv_with_extension_characters_and_crlf_decodes_with_exact_offsets() {
    let text = "番号,氏名,備考\r\n1,髙橋①,㈱渋谷\r\n2,山﨑ｶﾀｶﾅ,\"ソ,フト\"\r\n";
    let bytes = cp932(text);
    let mut r = open(&bytes, csv_options(Encoding::ShiftJis, true));
    assert_eq!(r.headers(), Some(&["番号".to_string(), "氏名".into(), "備考".into()][..]));
    let first = ok(r.next());
    assert_eq!(first.fields, ["1", "髙橋①", "㈱渋谷"]);
    assert_eq!((first.line, first.byte_offset), (2, cp932("番号,氏名,備考\r\n").len() as u64));
    let second = ok(r.next());
    assert_eq!(second.fields, ["2", "山﨑ｶﾀｶﾅ", "ソ,フト"]);
    let expected_offset = cp932("番号,氏名,備考\r\n1,髙橋①,㈱渋谷\r\n").len() as u64;
    assert_eq!((second.line, second.byte_offset), (3, expected_offset));
    assert!(r.next().is_none());
    assert_eq!(r.position().byte_offset, bytes.len() as u64);
}

#[test]
fn auto_detects_cp932_and_utf8() {
    let sjis = cp932("氏名\r\n髙橋\r\n");
    let mut r = open(&sjis, csv_options(Encoding::Auto, true));
    assert_eq!(r.encoding(), Encoding::ShiftJis);
    assert_eq!(ok(r.next()).fields, ["髙橋"]);
    let mut r = open("氏名\n髙橋\n".as_bytes(), csv_options(Encoding::Auto, true));
    assert_eq!(r.encoding(), Encoding::Utf8);
    assert_eq!(ok(r.next()).fields, ["髙橋"]);
}

#[test]
fn utf8_bom_is_skipped_but_offsets_count_it() {
    let bytes = [UTF8_BOM, "氏名,年齢\n山田,30\n".as_bytes()].concat();
    let mut r = open(&bytes, csv_options(Encoding::Utf8, true));
    assert_eq!(r.headers(), Some(&["氏名".to_string(), "年齢".into()][..]));
    let rec = ok(r.next());
    assert_eq!(rec.fields, ["山田", "30"]);
    assert_eq!((rec.line, rec.byte_offset), (2, 3 + "氏名,年齢\n".len() as u64));
}

#[test]
fn header_names_are_trimmed_of_ideographic_padding() {
    let mut r = open("　氏名　, 年齢 \n山田,30\n".as_bytes(), csv_options(Encoding::Utf8, true));
    assert_eq!(r.headers(), Some(&["氏名".to_string(), "年齢".into()][..]));
    assert_eq!(ok(r.next()).fields, ["山田", "30"]);
}

#[test]
fn quoted_fields_with_newline_comma_and_doubled_quotes_are_unquoted() {
    let data = "a,b\r\n\"x,1\",\"line1\r\nline2 \"\"q\"\"\"\r\nz,\"\"\r\n";
    let mut r = open(data.as_bytes(), csv_options(Encoding::Utf8, true));
    let rec = ok(r.next());
    assert_eq!(rec.fields, ["x,1", "line1\r\nline2 \"q\""]);
    assert_eq!(rec.line, 2);
    let rec = ok(r.next());
    assert_eq!(rec.fields, ["z", ""]);
    assert_eq!(rec.line, 4, "the quoted line break counts as a physical line");
}

#[test]
fn wrong_column_count_is_a_row_error_and_the_next_row_still_parses() {
    let mut r = open(b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n", csv_options(Encoding::Utf8, true));
    assert_eq!(ok(r.next()).fields, ["1", "2", "3"]);
    assert!(matches!(r.next(), Some(Err(RowError::ColumnCount { line: 3, expected: 3, found: 2, .. }))));
    assert!(matches!(r.next(), Some(Err(RowError::ColumnCount { line: 4, found: 4, .. }))));
    let rec = ok(r.next());
    assert_eq!((rec.line, rec.fields.len()), (5, 3));
    assert!(r.next().is_none());
}

#[test]
fn without_header_the_first_row_sets_the_column_count() {
    let mut r = open(b"1,2\n3\n4,5\n", csv_options(Encoding::Utf8, false));
    assert_eq!(ok(r.next()).fields, ["1", "2"]);
    assert!(matches!(r.next(), Some(Err(RowError::ColumnCount { line: 2, .. }))));
    assert_eq!(ok(r.next()).fields, ["4", "5"]);
}

#[test]
fn undecodable_bytes_are_a_row_error_naming_the_offset_and_reading_goes_on() {
    let mut bytes = cp932("a,b\r\n1,山");
    let bad_at = bytes.len() as u64;
    bytes.extend_from_slice(&[0x85, 0x40]);
    bytes.extend(cp932("\r\n2,田\r\n"));
    let mut r = open(&bytes, csv_options(Encoding::ShiftJis, true));
    match r.next() {
        Some(Err(e @ RowError::Undecodable { line: 2, .. })) => {
            assert!(matches!(e, RowError::Undecodable { byte_offset, .. } if byte_offset == bad_at));
            assert!(e.to_string().contains(&format!("offset {bad_at}")), "{e}");
        }
        other => panic!("expected an undecodable row, got {other:?}"),
    }
    assert_eq!(ok(r.next()).fields, ["2", "田"]);
}

#[test]
fn fixed_width_fields_are_sliced_by_cp932_byte_widths() {
    // 氏名 is 10 bytes (5 double-byte chars), カナ 6 bytes of half-width kana, 番号 4 digits.
    let line1 = "山田　太郎ﾔﾏﾀﾞﾀﾛ0001";
    let line2 = "髙橋①　　ﾀｶﾊｼ  0002";
    let bytes = cp932(&format!("{line1}\r\n{line2}\r\n"));
    let options = ReaderOptions {
        layout: Layout::Fixed { widths: vec![10, 6, 4] },
        ..csv_options(Encoding::ShiftJis, false)
    };
    let mut r = open(&bytes, options);
    let rec = ok(r.next());
    assert_eq!(rec.fields, ["山田　太郎", "ﾔﾏﾀﾞﾀﾛ", "0001"]);
    let rec = ok(r.next());
    assert_eq!(rec.fields, ["髙橋①　　", "ﾀｶﾊｼ  ", "0002"]);
    assert_eq!((rec.line, rec.byte_offset), (2, 22));
}

#[test]
fn fixed_width_line_of_wrong_length_or_split_character_is_a_row_error() {
    let bytes = cp932("ab山\r\nabc\r\n山田\r\n");
    let options = ReaderOptions {
        layout: Layout::Fixed { widths: vec![3, 1] },
        ..csv_options(Encoding::ShiftJis, false)
    };
    let mut r = open(&bytes, options);
    // "ab" + the lead byte of 山 in the first field: the width cuts the character.
    assert!(matches!(r.next(), Some(Err(RowError::Undecodable { line: 1, byte_offset: 2, .. }))));
    assert!(matches!(r.next(), Some(Err(RowError::RowLength { line: 2, expected: 4, found: 3, .. }))));
    assert!(matches!(r.next(), Some(Err(RowError::Undecodable { line: 3, .. }))));
}

#[test]
fn resume_at_saved_position_continues_with_the_right_lines_and_offsets() {
    let data = cp932("h1,h2\r\n1,\"a\r\nb\"\r\n2,い\r\n\r\n3,う\r\n4,え\r\n");
    let full: Vec<Record> = open(&data, csv_options(Encoding::ShiftJis, true)).map(|r| ok(Some(r))).collect();
    assert_eq!(full.len(), 4);

    let mut r = open(&data, csv_options(Encoding::ShiftJis, true));
    ok(r.next());
    ok(r.next());
    let saved = r.position();
    let resumed = match RecordReader::open(
        IoCursor::new(data.clone()),
        csv_options(Encoding::ShiftJis, true),
        Some(saved),
    ) {
        Ok(r) => r,
        Err(e) => panic!("resume failed: {e}"),
    };
    assert_eq!(resumed.headers(), Some(&["h1".to_string(), "h2".into()][..]));
    let rest: Vec<Record> = resumed.map(|r| ok(Some(r))).collect();
    assert_eq!(rest, full[2..]);
    assert_eq!((rest[0].line, rest[1].line), (6, 7));
}

#[test]
fn resume_before_the_data_is_refused() {
    let at = Some(Position { byte_offset: 2, line: 1 });
    let result =
        RecordReader::open(IoCursor::new(b"a,b\n1,2\n".to_vec()), csv_options(Encoding::Utf8, true), at);
    assert!(matches!(result, Err(RowError::Options(_))));
}

#[test]
fn delimiter_that_can_be_a_cp932_trail_byte_is_refused() {
    let options =
        ReaderOptions { layout: Layout::Csv { delimiter: b'|' }, ..csv_options(Encoding::ShiftJis, false) };
    assert!(matches!(RecordReader::new(&b"a|b\n"[..], options.clone()), Err(RowError::Options(_))));
    let utf8 = ReaderOptions { encoding: Encoding::Utf8, ..options };
    let mut r = match RecordReader::new(&b"a|b\n"[..], utf8) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(ok(r.next()).fields, ["a", "b"]);
}

#[test]
fn tab_delimited_cp932_from_a_plain_stream() {
    let bytes = cp932("髙\t﨑\n");
    let options =
        ReaderOptions { layout: Layout::Csv { delimiter: b'\t' }, ..csv_options(Encoding::Auto, false) };
    let mut r = match RecordReader::new(&bytes[..], options) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(ok(r.next()).fields, ["髙", "﨑"]);
}

#[test]
fn too_many_fields_is_a_row_error() {
    let options = ReaderOptions { max_fields: 2, ..csv_options(Encoding::Utf8, false) };
    let mut r = open(b"1,2,3\n", options);
    assert!(matches!(r.next(), Some(Err(RowError::TooManyFields { max: 2, found: 3, .. }))));
}

#[test]
fn oversized_row_is_fatal_and_ends_the_iteration() {
    let options = ReaderOptions { max_row_bytes: 16, ..csv_options(Encoding::Utf8, false) };
    let mut r = open(b"1,\"never closed and much too long\n2,3\n", options);
    match r.next() {
        Some(Err(e)) => assert!(e.is_fatal(), "{e}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert!(r.next().is_none());
}

/// Issue 12, item 6: a row written in UTF-8 inside a CP932 file must not be published as
/// mojibake. `佐藤　健` in UTF-8 happens to be valid CP932 (it would read `菴占陸縲蛛･`).
fn cp932_file_with_one_utf8_row() -> Vec<u8> {
    let mut bytes = cp932("番号,氏名\r\n1,山田　太郎\r\n");
    bytes.extend_from_slice("2,佐藤　健\r\n".as_bytes());
    bytes.extend(cp932("3,鈴木　花子\r\n"));
    bytes
}

#[test]
fn utf8_row_in_a_cp932_file_is_a_mixed_encoding_row_error() {
    let bytes = cp932_file_with_one_utf8_row();
    for encoding in [Encoding::Auto, Encoding::ShiftJis] {
        let mut r = open(&bytes, csv_options(encoding, true));
        assert_eq!(r.encoding(), Encoding::ShiftJis);
        assert_eq!(ok(r.next()).fields, ["1", "山田　太郎"]);
        match r.next() {
            Some(Err(e @ RowError::MixedEncoding { line: 3, .. })) => {
                assert!(e.to_string().starts_with("mixed_encoding: "), "{e}");
                assert!(!e.to_string().contains("佐藤"), "{e}");
            }
            other => panic!("expected a mixed_encoding error for line 3, got {other:?}"),
        }
        // Reading goes on with the next (CP932) row.
        assert_eq!(ok(r.next()).fields, ["3", "鈴木　花子"]);
        assert!(r.next().is_none());
    }
}

#[test]
fn cp932_kanji_row_that_is_not_utf8_still_imports_and_ascii_rows_are_unaffected() {
    let bytes = cp932("番号,氏名\r\n1,渋谷　髙橋①\r\n2,Tanaka Ken\r\n");
    let mut r = open(&bytes, csv_options(Encoding::Auto, true));
    assert_eq!(r.encoding(), Encoding::ShiftJis);
    assert_eq!(ok(r.next()).fields, ["1", "渋谷　髙橋①"]);
    assert_eq!(ok(r.next()).fields, ["2", "Tanaka Ken"]);
    assert!(r.next().is_none());
}

#[test]
fn utf8_file_with_multibyte_rows_is_unaffected() {
    let text = "番号,氏名\n1,佐藤　健\n2,山田　太郎\n";
    for encoding in [Encoding::Auto, Encoding::Utf8] {
        let mut r = open(text.as_bytes(), csv_options(encoding, true));
        assert_eq!(r.encoding(), Encoding::Utf8);
        assert_eq!(ok(r.next()).fields, ["1", "佐藤　健"]);
        assert_eq!(ok(r.next()).fields, ["2", "山田　太郎"]);
        assert!(r.next().is_none());
    }
}

#[test]
fn user_defined_character_rejects_the_row_naming_column_and_offset_not_value() {
    // CP932 外字 (0xF0 0x40 → U+E000): the row is refused, the next one still reads.
    let mut bytes = cp932("番号,氏名\r\n1,山田");
    let bad_at = bytes.len();
    bytes.extend_from_slice(&[0xF0, 0x40]);
    bytes.extend(cp932("\r\n2,鈴木\r\n"));
    let mut r = open(&bytes, csv_options(Encoding::ShiftJis, true));
    match r.next() {
        Some(Err(e)) => {
            let message = e.to_string();
            assert_eq!(e.line(), Some(2), "{message}");
            assert!(
                message.contains("column 氏名") && message.contains(&format!("offset {bad_at}")),
                "{message}"
            );
            assert!(!message.contains("山田"), "the value must not appear: {message}");
        }
        other => panic!("expected a row error for line 2, got {other:?}"),
    }
    assert_eq!(ok(r.next()).fields, ["2", "鈴木"]);

    // The same in a UTF-8 file without a header: the column is named by its number.
    let text = "1,佐藤\u{E000}\n2,山田\n";
    let mut r = open(text.as_bytes(), csv_options(Encoding::Utf8, false));
    match r.next() {
        Some(Err(e)) => {
            let message = e.to_string();
            assert!(message.contains("column #2") && message.contains("offset 8"), "{message}");
            assert!(!message.contains("佐藤"), "the value must not appear: {message}");
        }
        other => panic!("expected a row error for line 1, got {other:?}"),
    }
    assert_eq!(ok(r.next()).fields, ["2", "山田"]);
}
