//! How stage plans travel to executors: `datafusion-proto` with an extension codec for Ember's
//! own operators, wrapped so a plan is a serde value inside an RDD node.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::CachedScanExec;
use crate::exec::{ExchangeKind, ShuffleReaderExec};
use crate::runtime::sql_runtime;

/// The extension codec for Ember's physical operators.
#[derive(Debug, Default)]
pub struct EmberCodec;

/// A cached scan as it travels.
#[derive(Serialize, Deserialize)]
struct CachedScanWire {
    input: usize,
    partitions: Vec<usize>,
    skipped: usize,
    projection: Option<Vec<usize>>,
    schema: Vec<u8>,
}

/// Ember's operators as they travel.
#[derive(Serialize, Deserialize)]
enum NodeWire {
    Reader(ReaderWire),
    CachedScan(CachedScanWire),
}

/// A shuffle reader as it travels.
#[derive(Serialize, Deserialize)]
struct ReaderWire {
    input: usize,
    from_stage: usize,
    kind: ExchangeKind,
    partitions: usize,
    reduce_partitions: usize,
    gather: bool,
    schema: Vec<u8>,
}

fn schema_to_bytes(schema: &Schema) -> DfResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, schema)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn schema_from_bytes(bytes: &[u8]) -> DfResult<SchemaRef> {
    // Arrow's IPC reader panics on some malformed schemas: an error like any other.
    if let Err(e) = crate::batch::check_framing(bytes) {
        return Err(DataFusionError::Internal(format!("malformed schema: {e}")));
    }
    std::panic::catch_unwind(|| StreamReader::try_new(Cursor::new(bytes), None).map(|r| r.schema()))
        .unwrap_or_else(|_| Err(datafusion::arrow::error::ArrowError::ParseError("malformed schema".into())))
        .map_err(DataFusionError::from)
}

impl PhysicalExtensionCodec for EmberCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal("a shuffle reader has no inputs".into()));
        }
        let wire: NodeWire = postcard::from_bytes(buf)
            .map_err(|e| DataFusionError::Internal(format!("malformed Ember plan node: {e}")))?;
        let wire = match wire {
            NodeWire::Reader(r) => r,
            NodeWire::CachedScan(c) => {
                let schema = schema_from_bytes(&c.schema)?;
                // The cached RDD travels with the stage, as its cached input `c.input`.
                return Ok(Arc::new(CachedScanExec::new(None, c.input, c.partitions, c.skipped, c.projection, schema)));
            }
        };
        let schema = schema_from_bytes(&wire.schema)?;
        // Executors run the plan as cut; the exchange's keys only matter to the planner.
        let mut reader = ShuffleReaderExec::new(
            wire.input,
            wire.from_stage,
            wire.kind,
            Partitioning::UnknownPartitioning(wire.partitions),
            EquivalenceProperties::new(schema),
        );
        reader.reduce_partitions = wire.reduce_partitions;
        reader.gather = wire.gather;
        if wire.gather && wire.partitions != 1 {
            return Err(DataFusionError::Internal("a gathering shuffle reader has one partition".into()));
        }
        Ok(Arc::new(reader))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(scan) = node.downcast_ref::<CachedScanExec>() {
            let wire = NodeWire::CachedScan(CachedScanWire {
                input: scan.input,
                partitions: scan.partitions.clone(),
                skipped: scan.skipped,
                projection: scan.projection.clone(),
                schema: schema_to_bytes(&scan.schema())?,
            });
            let bytes = postcard::to_allocvec(&wire)
                .map_err(|e| DataFusionError::Internal(format!("cannot encode a cached scan: {e}")))?;
            buf.extend_from_slice(&bytes);
            return Ok(());
        }
        let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "Ember cannot ship the operator {} to executors",
                node.name()
            )));
        };
        let wire = NodeWire::Reader(ReaderWire {
            input: reader.input,
            from_stage: reader.from_stage,
            kind: reader.kind,
            partitions: reader.properties().partitioning.partition_count(),
            reduce_partitions: reader.reduce_partitions,
            gather: reader.gather,
            schema: schema_to_bytes(&reader.schema())?,
        });
        let bytes = postcard::to_allocvec(&wire)
            .map_err(|e| DataFusionError::Internal(format!("cannot encode a reader: {e}")))?;
        buf.extend_from_slice(&bytes);
        Ok(())
    }
}

/// A physical plan inside an RDD node: moved as it is within a process, encoded with
/// `datafusion-proto` (and [`EmberCodec`]) when the node is shipped.
pub(crate) struct PlanShip(Arc<dyn ExecutionPlan>);

impl PlanShip {
    pub(crate) fn new(plan: Arc<dyn ExecutionPlan>) -> Self {
        PlanShip(plan)
    }

    pub(crate) fn plan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.0
    }
}

impl Serialize for PlanShip {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = physical_plan_to_bytes_with_extension_codec(self.0.clone(), &EmberCodec)
            .map_err(|e| serde::ser::Error::custom(format!("cannot encode a stage plan: {e}")))?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for PlanShip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PlanShip, D::Error> {
        struct PlanVisitor;
        impl serde::de::Visitor<'_> for PlanVisitor {
            type Value = PlanShip;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a datafusion-proto physical plan")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PlanShip, E> {
                let rt = sql_runtime().map_err(E::custom)?;
                physical_plan_from_bytes_with_extension_codec(v, &rt.base, &EmberCodec)
                    .map(PlanShip)
                    .map_err(|e| E::custom(format!("cannot decode a stage plan: {e}")))
            }
        }
        d.deserialize_bytes(PlanVisitor)
    }
}
