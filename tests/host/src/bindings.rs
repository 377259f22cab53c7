//! Host-side bindings of the Spin interfaces flashclaim's components use.

wasmtime::component::bindgen!({
    path: "wit",
    world: "flashclaim:test-host/spin-imports",
    imports: { default: async },
    require_store_data_send: true,
    with: {
        "fermyon:spin/redis.connection": crate::redis_host::RedisConnection,
        "spin:postgres/postgres.connection": crate::pg_host::PgConnection,
    },
});

/// The cron trigger's world (`fermyon:spin-cron@2.0.0`): one exported function.
pub mod cron {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "fermyon:spin-cron/spin-cron",
        exports: { default: async },
    });
}
