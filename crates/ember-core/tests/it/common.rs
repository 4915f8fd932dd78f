//! Helpers shared by the integration tests.

use ember_core::{Context, EmberConf};

/// A `local[2]` context; with `serialize`, every task and result is encoded and decoded as a
/// remote executor would.
pub fn ctx_with(serialize: bool) -> Context {
    ctx_with_memory(None, serialize)
}

/// A `local[2]` context with a memory budget such as `"2m"` (the default when `None`).
pub fn ctx_with_memory(memory: Option<&str>, serialize: bool) -> Context {
    let mut conf = EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.local.serializeTasks", if serialize { "true" } else { "false" }))
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid conf");
    if let Some(m) = memory {
        conf = conf.memory(m).expect("valid memory size");
    }
    Context::new(conf).expect("context starts")
}

/// A context on two executor processes of one slot and 1 GiB each (`local-cluster[2,1,1024]`).
pub fn cluster_ctx() -> Context {
    let conf = EmberConf::new()
        .master("local-cluster[2,1,1024]")
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid conf");
    Context::new(conf).expect("context starts")
}

/// A plain `local[2]` context.
pub fn ctx() -> Context {
    ctx_with(false)
}

/// Both kinds of context: in-memory tasks and encoded tasks.
pub fn both() -> [Context; 2] {
    [ctx_with(false), ctx_with(true)]
}

/// Fault injection: destroys the data of a registered map output while the driver still lists
/// it, as when an executor's disk is lost. Returns whether there was such an output.
pub fn lose_map_output(ctx: &Context, shuffle: ember_core::shuffle::ShuffleId, map: usize) -> bool {
    match ctx.map_output_tracker().statuses(shuffle).get(map).cloned().flatten() {
        Some(s) => {
            ctx.env().shuffle.lose_output(&s);
            true
        }
        None => false,
    }
}

/// A `local[2]` context with extra settings; with `serialize`, tasks are encoded as for a remote
/// executor.
pub fn ctx_conf(settings: &[(&str, &str)], serialize: bool) -> Context {
    let mut conf = EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.local.serializeTasks", if serialize { "true" } else { "false" }))
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid conf");
    for (k, v) in settings {
        conf = conf.set(k, *v).expect("valid setting");
    }
    Context::new(conf).expect("context starts")
}
