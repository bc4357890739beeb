//! Encoders: Arrow record batches in, bytes out, one batch at a time, so an export never holds
//! more than a slice of its rows. CSV (header + RFC 4180 quoting), Parquet (typed columns, small
//! row groups flushed as they fill) and NDJSON (one object per line, explicit nulls).

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;

/// Rows encoded at a time: a batch from the engine is sliced to this before encoding.
pub const SLICE_ROWS: usize = 8192;
/// Rows per Parquet row group: the writer buffers one row group before it can emit it.
const ROW_GROUP_ROWS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
    Ndjson,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Csv, Format::Parquet, Format::Ndjson];

    /// Parses a `format=` value; the error names what was given and what is accepted.
    pub fn parse(text: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| format!("unknown format {text:?}; expected csv, parquet or ndjson"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Ndjson => "ndjson",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding: {0}")]
    Arrow(#[from] ArrowError),
    #[error("encoding Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

enum Inner {
    Csv { header: bool },
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    Ndjson,
}

/// One export's encoder; `encode` returns the bytes that are ready to leave.
pub struct Encoder {
    inner: Inner,
    schema: SchemaRef,
}

impl Encoder {
    pub fn new(format: Format, schema: SchemaRef) -> Result<Encoder, EncodeError> {
        let inner = match format {
            Format::Csv => Inner::Csv { header: true },
            Format::Ndjson => Inner::Ndjson,
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                Inner::Parquet(Box::new(ArrowWriter::try_new(
                    Vec::with_capacity(1 << 20),
                    schema.clone(),
                    Some(props),
                )?))
            }
        };
        Ok(Encoder { inner, schema })
    }

    /// Encodes a batch (of at most `SLICE_ROWS` rows, for flat memory).
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes, EncodeError> {
        match &mut self.inner {
            Inner::Csv { header } => {
                let batch = flat_for_csv(batch)?;
                let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2 + 64);
                {
                    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .build(&mut out);
                    writer.write(&batch)?;
                }
                *header = false;
                Ok(Bytes::from(out))
            }
            Inner::Ndjson => {
                let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2 + 64);
                {
                    let mut writer = datafusion::arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut out);
                    writer.write(batch)?;
                    writer.finish()?;
                }
                Ok(Bytes::from(out))
            }
            Inner::Parquet(writer) => {
                writer.write(batch)?;
                Ok(Bytes::from(std::mem::take(writer.inner_mut())))
            }
        }
    }

    /// The trailing bytes (Parquet's last row group and footer; a CSV header when no row came).
    pub fn finish(mut self) -> Result<Bytes, EncodeError> {
        match &mut self.inner {
            Inner::Csv { header: true } => {
                let empty = RecordBatch::new_empty(self.schema.clone());
                self.encode(&empty)
            }
            Inner::Csv { .. } | Inner::Ndjson => Ok(Bytes::new()),
            Inner::Parquet(writer) => {
                writer.finish()?;
                Ok(Bytes::from(std::mem::take(writer.inner_mut())))
            }
        }
    }
}

/// CSV has no nested values: lists and structs become JSON text.
fn flat_for_csv(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let nested = |t: &DataType| {
        matches!(
            t,
            DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) | DataType::Map(..)
        )
    };
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| nested(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if nested(field.data_type()) {
            fields.push(Field::new(field.name(), DataType::Utf8, true));
            columns.push(json_text(column)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Each value of a nested column as JSON text (via the NDJSON writer, one row at a time).
fn json_text(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        column.data_type().clone(),
        true,
    )]));
    let mut out = StringBuilder::with_capacity(column.len(), column.len() * 16);
    for row in 0..column.len() {
        if column.is_null(row) {
            out.append_null();
            continue;
        }
        let one = RecordBatch::try_new(schema.clone(), vec![column.slice(row, 1)])?;
        let mut buf = Vec::new();
        {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
            writer.write(&one)?;
            writer.finish()?;
        }
        let line: serde_json::Value =
            serde_json::from_slice(&buf).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        out.append_value(line["v"].to_string());
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, true),
                Field::new("score", DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("a, \"quoted\"\nline 🎉"),
                    None,
                ])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(3.0)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines_as_rfc_4180_says() {
        let b = batch();
        let mut encoder = Encoder::new(Format::Csv, b.schema()).unwrap();
        let mut out = encoder.encode(&b).unwrap().to_vec();
        out.extend_from_slice(&encoder.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "name,score\nplain,1.5\n\"a, \"\"quoted\"\"\nline 🎉\",\n,3.0\n"
        );
    }

    #[test]
    fn an_empty_csv_export_still_has_its_header() {
        let b = batch();
        let encoder = Encoder::new(Format::Csv, b.schema()).unwrap();
        assert_eq!(&encoder.finish().unwrap()[..], b"name,score\n");
    }

    #[test]
    fn ndjson_writes_one_object_per_line_with_nulls() {
        let b = batch();
        let mut encoder = Encoder::new(Format::Ndjson, b.schema()).unwrap();
        let text = String::from_utf8(encoder.encode(&b).unwrap().to_vec()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["name"], "a, \"quoted\"\nline 🎉");
        assert!(lines[1]["score"].is_null());
    }

    #[test]
    fn parquet_output_is_a_parquet_file() {
        let b = batch();
        let mut encoder = Encoder::new(Format::Parquet, b.schema()).unwrap();
        let mut out = encoder.encode(&b).unwrap().to_vec();
        out.extend_from_slice(&encoder.finish().unwrap());
        assert_eq!(&out[..4], b"PAR1");
        assert_eq!(&out[out.len() - 4..], b"PAR1");
    }
}
