//! Image data sets as the Hugging Face hub stores them: parquet files whose rows hold an
//! encoded image (a struct `{bytes: binary, path: string}`, the `datasets` library's
//! `Image` feature) and an integer label. MNIST (`ylecun/mnist`) and CIFAR-10
//! (`uoft-cs/cifar10`) both come this way.
//!
//! Read with parquet's record API rather than Arrow: a few dozen crates instead of
//! hundreds, and these files are small enough to walk row by row.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;

use crate::{Error, Result};

/// One row: the encoded image (PNG/JPEG) and its label.
pub type Row = (Vec<u8>, i64);

/// Reads every (image bytes, label) row of `path`. `image_col` is the struct column with a
/// `bytes` member (or a plain binary column); `label_col` an integer column.
pub fn read_rows(path: &Path, image_col: &str, label_col: &str) -> Result<Vec<Row>> {
    let what = path.display();
    let file = File::open(path).map_err(|e| Error::invalid(format!("cannot open {what}: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::Corrupt(format!("{what}: not a readable parquet file: {e}")))?;
    let expected = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut out = Vec::with_capacity(expected);
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::Corrupt(format!("{what}: row {i}: {e}")))?;
        let (mut image, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            if name == image_col {
                image = match field {
                    Field::Bytes(b) => Some(b.data().to_vec()),
                    Field::Group(g) => g.get_column_iter().find_map(|(n, f)| match f {
                        Field::Bytes(b) if n == "bytes" => Some(b.data().to_vec()),
                        _ => None,
                    }),
                    _ => None,
                };
            } else if name == label_col {
                label = match field {
                    Field::Long(v) => Some(*v),
                    Field::Int(v) => Some(*v as i64),
                    Field::Short(v) => Some(*v as i64),
                    Field::Byte(v) => Some(*v as i64),
                    _ => None,
                };
            }
        }
        let image = image.ok_or_else(|| {
            Error::Corrupt(format!(
                "{what}: row {i} has no image bytes in column {image_col:?}"
            ))
        })?;
        let label = label.ok_or_else(|| {
            Error::Corrupt(format!(
                "{what}: row {i} has no integer label in column {label_col:?}"
            ))
        })?;
        out.push((image, label));
    }
    if out.len() != expected {
        return Err(Error::Corrupt(format!(
            "{what}: {} rows read, the footer declares {expected}",
            out.len()
        )));
    }
    Ok(out)
}

/// Writes rows in the hub's layout (`image: {bytes, path}`, `label: int64`): how tests
/// and tools make small data sets that the real loader reads.
pub fn write_rows(path: &Path, image_col: &str, label_col: &str, rows: &[Row]) -> Result<()> {
    let schema = parse_message_type(&format!(
        "message schema {{
            optional group {image_col} {{
                optional binary bytes;
                optional binary path (STRING);
            }}
            optional int64 {label_col};
        }}"
    ))
    .map_err(|e| Error::invalid(format!("bad column names: {e}")))?;
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let file = File::create(path)?;
    let fail = |e: parquet::errors::ParquetError| {
        Error::invalid(format!("cannot write {}: {e}", path.display()))
    };
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), props).map_err(fail)?;
    let mut group = writer.next_row_group().map_err(fail)?;
    let images: Vec<ByteArray> = rows
        .iter()
        .map(|(b, _)| ByteArray::from(b.clone()))
        .collect();
    let names: Vec<ByteArray> = (0..rows.len())
        .map(|i| ByteArray::from(format!("{i}.png").as_str()))
        .collect();
    let labels: Vec<i64> = rows.iter().map(|(_, l)| *l).collect();
    // Every value present: definition level 2 inside the optional group, 1 at the top.
    let full2 = vec![2i16; rows.len()];
    let full1 = vec![1i16; rows.len()];
    for column in 0..3 {
        let mut col = group.next_column().map_err(fail)?.expect("three columns");
        match column {
            0 => col
                .typed::<ByteArrayType>()
                .write_batch(&images, Some(&full2), None)
                .map_err(fail)?,
            1 => col
                .typed::<ByteArrayType>()
                .write_batch(&names, Some(&full2), None)
                .map_err(fail)?,
            _ => col
                .typed::<Int64Type>()
                .write_batch(&labels, Some(&full1), None)
                .map_err(fail)?,
        };
        col.close().map_err(fail)?;
    }
    group.close().map_err(fail)?;
    writer.close().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let rows: Vec<Row> = (0..5)
            .map(|i| (vec![i as u8; i + 1], i as i64 * 3))
            .collect();
        write_rows(&path, "image", "label", &rows).unwrap();
        assert_eq!(read_rows(&path, "image", "label").unwrap(), rows);
        let e = read_rows(&path, "img", "label").unwrap_err().to_string();
        assert!(e.contains("no image bytes in column \"img\""), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
        let e = read_rows(&path, "image", "label").unwrap_err().to_string();
        assert!(e.contains("d.parquet") && e.contains("parquet"), "{e}");
    }
}
