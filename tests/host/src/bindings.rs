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

/// The Spin 4 interfaces of a WASIp3 component (spin-sdk 7). Their functions are WIT
/// `async func`s, so each gets an `Accessor` instead of `&mut self` and awaits its I/O
/// without holding the store: the other requests the instance is serving run meanwhile.
///
/// `spin:postgres@4.2.0` keeps the synchronous functions of 4.0.0 (`open`, `query`,
/// `execute`, the connection builder) beside its async ones. They are host-async: the guest
/// blocks on a fiber while the host awaits Postgres, as Spin does, and the instance's other
/// requests wait for the store meanwhile. Its constructor is trappable so that a full
/// resource table traps instead of panicking the host.
pub mod p3 {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "flashclaim:test-host/spin-imports-p3",
        imports: {
            "spin:postgres/postgres.[constructor]connection-builder": async | trappable,
            "spin:postgres/postgres": async,
        },
        require_store_data_send: true,
        with: {
            "spin:redis/redis.connection": crate::redis_host::RedisConnection,
            "spin:postgres/postgres.connection": crate::pg_host::PgConnection,
            "spin:postgres/postgres.connection-builder": crate::pg_host::PgConnectionBuilder,
        },
    });
}

/// The cron trigger's world (`fermyon:spin-cron@2.0.0`): one exported function.
pub mod cron {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "fermyon:spin-cron/spin-cron",
        exports: { default: async },
    });
}
