//! [`Batch`]: an Arrow record batch as an Ember record, serialized as an Arrow IPC stream.

use std::io::Cursor;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::de::{Error as _, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Arrow record batch that can live in an RDD: shuffled between stages, cached, sent back
/// to the driver. In one process it is moved as it is; across processes (and into shuffle
/// buffers) it travels as an Arrow IPC stream of its schema and one batch, which the shuffle's
/// own compression then packs.
#[derive(Debug, Clone)]
pub struct Batch(pub RecordBatch);

impl Batch {
    /// The batch's rows.
    pub fn num_rows(&self) -> usize {
        self.0.num_rows()
    }

    /// Encodes the batch as an Arrow IPC stream.
    pub fn to_ipc(&self) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
        let batch = compact_views(&self.0)?;
        let mut out = Vec::with_capacity(batch.get_array_memory_size().min(64 << 20) + 1024);
        {
            let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
            w.write(&batch)?;
            w.finish()?;
        }
        Ok(out)
    }

    /// Decodes a batch written by [`Batch::to_ipc`]. Malformed bytes are an error, never a
    /// panic: a stream must hold exactly one batch.
    pub fn from_ipc(bytes: &[u8]) -> Result<Batch, String> {
        // Arrow's IPC reader panics on some malformed schemas (an integer of 26 bits): such
        // bytes are an error like any other corruption.
        std::panic::catch_unwind(|| Batch::decode(bytes))
            .unwrap_or_else(|_| Err("bad Arrow IPC batch: the reader rejected its schema".into()))
    }

    fn decode(bytes: &[u8]) -> Result<Batch, String> {
        check_framing(bytes)?;
        let mut r = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| format!("bad Arrow IPC batch: {e}"))?;
        let batch = match r.next() {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(format!("bad Arrow IPC batch: {e}")),
            None => return Err("bad Arrow IPC batch: the stream holds no batch".into()),
        };
        match r.next() {
            None => Ok(Batch(batch)),
            Some(_) => Err("bad Arrow IPC batch: the stream holds more than one batch".into()),
        }
    }
}

/// The batch with its string and binary view columns copied down to the bytes their rows use.
///
/// A view array made by `take` or `filter` (a join's output, say) shares the data buffers of the
/// array it came from, and Arrow IPC writes a view array's buffers whole: without this, every
/// small batch out of a join would carry the whole build side's strings.
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{Array, ArrayRef, BinaryViewArray, StringViewArray};
    use datafusion::arrow::datatypes::DataType;
    let wasteful = |used: usize, held: usize| held > 2 * used + 4096;
    let mut columns: Option<Vec<ArrayRef>> = None;
    for (i, col) in batch.columns().iter().enumerate() {
        let compacted: Option<ArrayRef> = match col.data_type() {
            DataType::Utf8View => col.as_any().downcast_ref::<StringViewArray>().and_then(|a| {
                let held: usize = a.data_buffers().iter().map(|b| b.len()).sum();
                wasteful(a.total_buffer_bytes_used(), held).then(|| std::sync::Arc::new(a.gc()) as ArrayRef)
            }),
            DataType::BinaryView => col.as_any().downcast_ref::<BinaryViewArray>().and_then(|a| {
                let held: usize = a.data_buffers().iter().map(|b| b.len()).sum();
                wasteful(a.total_buffer_bytes_used(), held).then(|| std::sync::Arc::new(a.gc()) as ArrayRef)
            }),
            _ => None,
        };
        if let Some(c) = compacted {
            columns.get_or_insert_with(|| batch.columns().to_vec())[i] = c;
        }
    }
    match columns {
        Some(c) => RecordBatch::try_new(batch.schema(), c),
        None => Ok(batch.clone()),
    }
}

/// Checks that every message of an IPC stream lies within `bytes` before Arrow's reader, which
/// allocates what a message's header claims, sees it: a corrupt length is an error, not an
/// allocation of gigabytes.
pub(crate) fn check_framing(bytes: &[u8]) -> Result<(), String> {
    let word =
        |at: usize| -> Option<u32> { bytes.get(at..at + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])) };
    let mut pos = 0usize;
    loop {
        let Some(mut len) = word(pos) else {
            return Err("bad Arrow IPC batch: the stream ends inside a message header".into());
        };
        pos += 4;
        if len == 0xFFFF_FFFF {
            len = word(pos).ok_or("bad Arrow IPC batch: the stream ends inside a message header")?;
            pos += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let meta_end = pos
            .checked_add(len as usize)
            .filter(|&e| len <= i32::MAX as u32 && e <= bytes.len())
            .ok_or("bad Arrow IPC batch: a message's header runs past the stream's end")?;
        let message = datafusion::arrow::ipc::root_as_message(&bytes[pos..meta_end])
            .map_err(|e| format!("bad Arrow IPC batch: a malformed message header: {e}"))?;
        let body = u64::try_from(message.bodyLength()).map_err(|_| "bad Arrow IPC batch: a negative body length")?;
        pos = (meta_end as u64)
            .checked_add(body)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or("bad Arrow IPC batch: a message's body runs past the stream's end")? as usize;
    }
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_ipc().map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Batch, D::Error> {
        struct BatchVisitor;
        impl Visitor<'_> for BatchVisitor {
            type Value = Batch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an Arrow IPC stream of one record batch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Batch, E> {
                Batch::from_ipc(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(BatchVisitor).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sample() -> Batch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .expect("valid batch");
        Batch(b)
    }

    #[test]
    fn a_batch_survives_the_record_encoding() {
        let b = sample();
        let bytes = postcard::to_allocvec(&b).expect("encodes");
        let back: Batch = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back.0, b.0);
    }

    #[test]
    fn a_view_column_taken_from_a_large_one_travels_alone() {
        use datafusion::arrow::array::{Array, StringViewArray, UInt32Array};
        use datafusion::arrow::compute::take;
        let big: StringViewArray =
            (0..10_000).map(|i| Some(format!("a string long enough to be out of line {i}"))).collect();
        let taken = take(&big, &UInt32Array::from(vec![7, 9_999]), None).expect("take");
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, false)]));
        let b = Batch(RecordBatch::try_new(schema, vec![taken]).expect("batch"));
        let ipc = b.to_ipc().expect("encodes");
        assert!(ipc.len() < 2_000, "two strings took {} bytes", ipc.len());
        let back = Batch::from_ipc(&ipc).expect("decodes");
        let col = back.0.column(0).as_any().downcast_ref::<StringViewArray>().expect("views");
        assert_eq!(col.value(1), "a string long enough to be out of line 9999");
        assert_eq!(col.len(), 2);
    }

    #[test]
    fn corrupt_or_truncated_bytes_are_an_error() {
        let ipc = sample().to_ipc().expect("encodes");
        for cut in [0, 1, 8, ipc.len() / 2, ipc.len() - 1] {
            assert!(Batch::from_ipc(&ipc[..cut]).is_err(), "a stream cut at {cut} must not decode");
        }
        let mut flipped = ipc.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            // Must not panic; either an error or (rarely) a batch of the same shape.
            let _ = Batch::from_ipc(&flipped);
            flipped[i] ^= 0x5a;
        }
    }
}
