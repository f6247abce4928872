impl Shop {
    /// Adds an item to the cart; its total comes back.
    pub async fn add(
        &self,
        tx: &mut Tx,
        events: Broadcast,
        stock: StockClient,
        item: String,
        quantity: u32,
    ) -> ShopResult<u64> {
        let _ = (tx, stock);
        events.send(&item)?;
        Ok(u64::from(quantity))
    }
    pub fn items(
        &self,
        db: Db,
        from: u64,
    ) -> impl Stream<Item = farine::Result<Item>> + Send + 'static {
        let _ = db;
        futures::stream::iter([])
    }
    pub async fn name(&self) -> &'static str {
        "shop"
    }
    #[cfg(feature = "beta")]
    pub async fn beta(&self) -> Total {
        Total::default()
    }
    async fn on_order(&self, order: Order) -> farine::Result<()> {
        self.notify(order.id).await
    }
    async fn on_own(&self, body: serde_json::Value) {}
    pub async fn notify(&self, id: i64) -> farine::Result<()> {
        let publish: Publisher = ::farine::__private::publisher(
            "shop",
            ::core::option::Option::Some("orders"),
            ::core::option::Option::None,
        );
        { publish.send(&id).await }
    }
    async fn on_price(&self, db: &mut Db, event: Event<Price>) -> farine::Result<()> {
        Ok(())
    }
    async fn poll(&self, shutdown: Shutdown) {
        shutdown.requested().await
    }
}
const _: () = {
    #[allow(unused_imports)]
    use rpc::method as _;
    #[allow(unused_imports)]
    use rpc::method as _;
    #[allow(unused_imports)]
    use rpc::method as _;
    #[allow(unused_imports)]
    use rpc::method as _;
    #[allow(unused_imports)]
    use amqp::consume as _;
    #[allow(unused_imports)]
    use amqp::consume as _;
    #[allow(unused_imports)]
    use amqp::publish as _;
    #[allow(unused_imports)]
    use stream::http as _;
    #[allow(unused_imports)]
    use execute::method as _;
    fn __farine_build_shop() -> ::farine::__private::ServiceDef {
        let svc: ::std::sync::Arc<Shop> = ::std::sync::Arc::new(
            <Shop as ::core::default::Default>::default(),
        );
        let mut def = ::farine::__private::ServiceDef::new("shop");
        {
            def.uses_db("add");
            def.rpc(
                ::farine::__private::RpcAttr {
                    method: "add",
                    concurrency: ::core::option::Option::Some(4),
                    broadcast: ::core::option::Option::Some("shop.events"),
                },
                {
                    let svc = ::std::sync::Arc::clone(&svc);
                    ::std::sync::Arc::new(move |
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        mut __args: ::farine::__private::Args,
                    | -> ::farine::__private::Call {
                        let __farine_arg_0: String = match __args.take(0usize, "item") {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(info) => {
                                return ::farine::__private::Call::Rejected(info);
                            }
                        };
                        let __farine_arg_1: u32 = match __args.take(1usize, "quantity") {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(info) => {
                                return ::farine::__private::Call::Rejected(info);
                            }
                        };
                        if let ::core::result::Result::Err(info) = __args.finish(2usize)
                        {
                            return ::farine::__private::Call::Rejected(info);
                        }
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::farine::__private::unary(async move {
                            let mut __farine_injected_0 = match ::farine::__private::begin_tx(
                                    &__ctx,
                                )
                                .await
                            {
                                ::core::result::Result::Ok(tx) => tx,
                                ::core::result::Result::Err(err) => {
                                    return ::farine::__private::error_frame(err);
                                }
                            };
                            let __farine_injected_1 = ::farine::__private::Broadcast::default();
                            let __farine_injected_2: StockClient = match ::farine::__private::inject_client::<
                                StockClient,
                            >(&__ctx)
                                .await
                            {
                                ::core::result::Result::Ok(client) => client,
                                ::core::result::Result::Err(err) => {
                                    return ::farine::__private::error_frame(err);
                                }
                            };
                            let __out = svc
                                .add(
                                    &mut __farine_injected_0,
                                    ::core::clone::Clone::clone(&__farine_injected_1),
                                    __farine_injected_2,
                                    __farine_arg_0,
                                    __farine_arg_1,
                                )
                                .await;
                            let __frame = {
                                #[allow(unused_imports, clippy::needless_borrow)]
                                use ::farine::__private::{
                                    ViaDisplayError as _, ViaSerializableError as _,
                                    ViaSerializeOnlyError as _, ViaValue as _,
                                };
                                (&&&&::farine::__private::Returned(__out)).frame()
                            };
                            let __frame = ::farine::__private::settle_tx_frame(
                                    __farine_injected_0,
                                    __frame,
                                )
                                .await;
                            ::farine::__private::reply(
                                __frame,
                                ::core::option::Option::Some(&__farine_injected_1),
                            )
                        })
                    })
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "add",
                    ::std::vec![
                        ("item", (&& ::farine::__private::SchemaOf:: < String > ::new())
                        .schema()), ("quantity", (&& ::farine::__private::SchemaOf:: <
                        u32 > ::new()).schema())
                    ],
                    ::core::option::Option::Some(
                        (&&::farine::__private::SchemaOf::<
                            <ShopResult<
                                u64,
                            > as ::farine::__private::RpcOutput<
                                ::farine::__private::Fallible,
                            >>::Ok,
                        >::new())
                            .schema(),
                    ),
                );
            }
        }
        {
            def.uses_db("items");
            def.rpc(
                ::farine::__private::RpcAttr {
                    method: "items",
                    concurrency: ::core::option::Option::None,
                    broadcast: ::core::option::Option::None,
                },
                {
                    let svc = ::std::sync::Arc::clone(&svc);
                    ::std::sync::Arc::new(move |
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        mut __args: ::farine::__private::Args,
                    | -> ::farine::__private::Call {
                        let __farine_arg_0: u64 = match __args.take(0usize, "from") {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(info) => {
                                return ::farine::__private::Call::Rejected(info);
                            }
                        };
                        if let ::core::result::Result::Err(info) = __args.finish(1usize)
                        {
                            return ::farine::__private::Call::Rejected(info);
                        }
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::farine::__private::streaming(async move {
                            #[allow(unused_mut)]
                            let mut __farine_injected_0 = match ::farine::__private::acquire_db(
                                    &__ctx,
                                )
                                .await
                            {
                                ::core::result::Result::Ok(db) => db,
                                ::core::result::Result::Err(err) => {
                                    return ::farine::__private::error_stream(err);
                                }
                            };
                            let __stream = svc
                                .items(__farine_injected_0, __farine_arg_0);
                            ::farine::__private::frames(
                                __stream,
                                |__out| {
                                    #[allow(unused_imports, clippy::needless_borrow)]
                                    use ::farine::__private::{
                                        ViaDisplayError as _, ViaSerializableError as _,
                                        ViaSerializeOnlyError as _, ViaValue as _,
                                    };
                                    (&&&&::farine::__private::Returned(__out)).frame()
                                },
                            )
                        })
                    })
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "items",
                    ::std::vec![
                        ("from", (&& ::farine::__private::SchemaOf:: < u64 > ::new())
                        .schema())
                    ],
                    ::core::option::Option::Some(
                        (&&::farine::__private::SchemaOf::<
                            <farine::Result<
                                Item,
                            > as ::farine::__private::RpcOutput<
                                ::farine::__private::Fallible,
                            >>::Ok,
                        >::new())
                            .schema(),
                    ),
                );
            }
        }
        {
            def.rpc(
                ::farine::__private::RpcAttr {
                    method: "name",
                    concurrency: ::core::option::Option::None,
                    broadcast: ::core::option::Option::None,
                },
                {
                    let svc = ::std::sync::Arc::clone(&svc);
                    ::std::sync::Arc::new(move |
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        mut __args: ::farine::__private::Args,
                    | -> ::farine::__private::Call {
                        if let ::core::result::Result::Err(info) = __args.finish(0usize)
                        {
                            return ::farine::__private::Call::Rejected(info);
                        }
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::farine::__private::unary(async move {
                            let __out = svc.name().await;
                            let __frame = {
                                #[allow(unused_imports, clippy::needless_borrow)]
                                use ::farine::__private::{
                                    ViaDisplayError as _, ViaSerializableError as _,
                                    ViaSerializeOnlyError as _, ViaValue as _,
                                };
                                (&&&&::farine::__private::Returned(__out)).frame()
                            };
                            let __frame = __frame;
                            ::farine::__private::reply(
                                __frame,
                                ::core::option::Option::None,
                            )
                        })
                    })
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "name",
                    ::std::vec![],
                    ::core::option::Option::Some(
                        (&&::farine::__private::SchemaOf::<
                            <&'static str as ::farine::__private::RpcOutput<
                                ::farine::__private::Borrowed,
                            >>::Ok,
                        >::new())
                            .schema(),
                    ),
                );
            }
        }
        #[cfg(feature = "beta")]
        {
            def.rpc(
                ::farine::__private::RpcAttr {
                    method: "beta",
                    concurrency: ::core::option::Option::None,
                    broadcast: ::core::option::Option::None,
                },
                {
                    let svc = ::std::sync::Arc::clone(&svc);
                    ::std::sync::Arc::new(move |
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        mut __args: ::farine::__private::Args,
                    | -> ::farine::__private::Call {
                        if let ::core::result::Result::Err(info) = __args.finish(0usize)
                        {
                            return ::farine::__private::Call::Rejected(info);
                        }
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::farine::__private::unary(async move {
                            let __out = svc.beta().await;
                            let __frame = {
                                #[allow(unused_imports, clippy::needless_borrow)]
                                use ::farine::__private::{
                                    ViaDisplayError as _, ViaSerializableError as _,
                                    ViaSerializeOnlyError as _, ViaValue as _,
                                };
                                (&&&&::farine::__private::Returned(__out)).frame()
                            };
                            let __frame = __frame;
                            ::farine::__private::reply(
                                __frame,
                                ::core::option::Option::None,
                            )
                        })
                    })
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "beta",
                    ::std::vec![],
                    ::core::option::Option::Some(
                        (&&::farine::__private::SchemaOf::<Total>::new()).schema(),
                    ),
                );
            }
        }
        {
            def.consume(
                ::farine::__private::ConsumeAttr {
                    method: "on_order",
                    exchange: ::core::option::Option::Some("orders"),
                    routing_key: ::core::option::Option::Some("created"),
                    exchange_type: ::core::option::Option::None,
                    queue: ::core::option::Option::None,
                    concurrency: ::core::option::Option::Some(2),
                },
                {
                    const _: fn() = <Order as ::farine::__private::MessageBody>::check;
                    #[allow(unused_imports, clippy::needless_borrow)]
                    use ::farine::__private::{ViaMessageBody as _, ViaUndecodable as _};
                    (&&::farine::__private::ConsumeBody::<Order>::new())
                        .handler(
                            ::std::sync::Arc::clone(&svc),
                            |
                                svc: ::std::sync::Arc<Shop>,
                                __ctx: ::std::sync::Arc<
                                    ::farine::__private::ServiceContext,
                                >,
                                __farine_arg_0: Order|
                            async move {
                                let __outcome = ::farine::__private::HandlerResult::into_outcome(
                                    svc.on_order(__farine_arg_0).await,
                                );
                                __outcome
                            },
                        )
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "on_order",
                    ::std::vec![
                        ("order", (&& ::farine::__private::SchemaOf:: < Order > ::new())
                        .schema())
                    ],
                    ::core::option::Option::None,
                );
            }
        }
        {
            def.consume(
                ::farine::__private::ConsumeAttr {
                    method: "on_own",
                    exchange: ::core::option::Option::None,
                    routing_key: ::core::option::Option::None,
                    exchange_type: ::core::option::Option::None,
                    queue: ::core::option::Option::None,
                    concurrency: ::core::option::Option::None,
                },
                {
                    const _: fn() = <serde_json::Value as ::farine::__private::MessageBody>::check;
                    #[allow(unused_imports, clippy::needless_borrow)]
                    use ::farine::__private::{ViaMessageBody as _, ViaUndecodable as _};
                    (&&::farine::__private::ConsumeBody::<serde_json::Value>::new())
                        .handler(
                            ::std::sync::Arc::clone(&svc),
                            |
                                svc: ::std::sync::Arc<Shop>,
                                __ctx: ::std::sync::Arc<
                                    ::farine::__private::ServiceContext,
                                >,
                                __farine_arg_0: serde_json::Value|
                            async move {
                                let __outcome = ::farine::__private::HandlerResult::into_outcome(
                                    svc.on_own(__farine_arg_0).await,
                                );
                                __outcome
                            },
                        )
                },
            );
            {
                #[allow(unused_imports)]
                use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
                def.schemas(
                    "on_own",
                    ::std::vec![
                        ("body", (&& ::farine::__private::SchemaOf:: < serde_json::Value
                        > ::new()).schema())
                    ],
                    ::core::option::Option::None,
                );
            }
        }
        {
            def.publish(::farine::__private::PublishAttr {
                method: "notify",
                exchange: ::core::option::Option::Some("orders"),
                routing_key: ::core::option::Option::None,
            });
        }
        {
            def.uses_db("on_price");
            def.listen(
                ::farine::__private::ListenAttr {
                    method: "on_price",
                    endpoint: ::core::option::Option::Some(
                        "https://prices.example/stream",
                    ),
                },
                ::farine::__private::event_handler(
                    ::std::sync::Arc::clone(&svc),
                    |
                        svc: ::std::sync::Arc<Shop>,
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        __farine_arg_0: Event<Price>|
                    async move {
                        #[allow(unused_mut)]
                        let mut __farine_injected_0 = match ::farine::__private::acquire_db(
                                &__ctx,
                            )
                            .await
                        {
                            ::core::result::Result::Ok(db) => db,
                            ::core::result::Result::Err(err) => {
                                return ::farine::__private::Outcome::Failed(err.to_string());
                            }
                        };
                        let __outcome = ::farine::__private::HandlerResult::into_outcome(
                            svc.on_price(&mut __farine_injected_0, __farine_arg_0).await,
                        );
                        __outcome
                    },
                ),
            );
        }
        {
            def.execute(
                ::farine::__private::ExecuteAttr {
                    method: "poll",
                    restart: ::core::option::Option::None,
                    restart_delay_ms: ::core::option::Option::Some(5000u64),
                    max_restarts: ::core::option::Option::Some(3),
                },
                ::farine::__private::execute_handler(
                    ::std::sync::Arc::clone(&svc),
                    |
                        svc: ::std::sync::Arc<Shop>,
                        __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
                        __shutdown: ::farine::__private::Shutdown|
                    async move {
                        let __outcome = ::farine::__private::HandlerResult::into_outcome(
                            svc.poll(::core::clone::Clone::clone(&__shutdown)).await,
                        );
                        __outcome
                    },
                ),
            );
        }
        let _ = svc;
        def
    }
    ::farine::__private::inventory::submit! {
        ::farine::__private::ServiceRegistration { name : "shop", module :
        ::core::module_path!(), build : __farine_build_shop, }
    }
};
const _: () = {
    const _: fn() = <<ShopResult<
        u64,
    > as ::farine::__private::RpcOutput<
        ::farine::__private::Fallible,
    >>::Ok as ::farine::__private::RpcReturn>::check;
};
const _: () = {
    const _: fn() = <<farine::Result<
        Item,
    > as ::farine::__private::RpcOutput<
        ::farine::__private::Fallible,
    >>::Ok as ::farine::__private::RpcReturn>::check;
};
const _: () = {
    const _: fn() = <<&'static str as ::farine::__private::RpcOutput<
        ::farine::__private::Borrowed,
    >>::Ok as ::farine::__private::RpcReturn>::check;
};
#[cfg(feature = "beta")]
const _: () = {
    const _: fn() = <Total as ::farine::__private::NotAResult<_>>::check;
    const _: fn() = <Total as ::farine::__private::RpcReturn>::check;
};
///A typed client of service `shop`: one method per `#[rpc::method]`.
#[derive(Clone)]
pub struct ShopClient {
    client: ::farine::__private::Client,
    options: ::farine::__private::CallOptions,
}
#[allow(dead_code, private_interfaces, clippy::too_many_arguments)]
impl ShopClient {
    /// The service this client calls.
    pub const SERVICE: &'static str = "shop";
    /// Connects with the `[DEFAULT]` settings of `config`.
    pub async fn connect(
        config: &::farine::__private::Config,
    ) -> ::farine::__private::Result<Self> {
        ::core::result::Result::Ok(
            Self::new(::farine::__private::Client::connect(config).await?),
        )
    }
    /// Wraps an existing client (sharing its connection and reply queue).
    pub fn new(client: ::farine::__private::Client) -> Self {
        Self {
            client,
            options: ::core::default::Default::default(),
        }
    }
    /// The same client with another deadline for each call (default: `rpc_timeout`).
    pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
        self.options.timeout = ::core::option::Option::Some(timeout);
        self
    }
    /// The same client with another longest wait between two stream items.
    pub fn idle_timeout(mut self, timeout: ::std::time::Duration) -> Self {
        self.options.idle_timeout = ::core::option::Option::Some(timeout);
        self
    }
    /// Adds an item to the cart; its total comes back.
    ///
    /// Calls `shop.add` over AMQP.
    pub async fn add(
        &self,
        item: String,
        quantity: u32,
    ) -> ::farine::__private::Result<
        <ShopResult<
            u64,
        > as ::farine::__private::RpcOutput<::farine::__private::Fallible>>::Ok,
    >
    where
        for<'de> <ShopResult<
            u64,
        > as ::farine::__private::RpcOutput<
            ::farine::__private::Fallible,
        >>::Ok: ::farine::__private::Deserialize<'de>,
    {
        let __args = ::std::vec![
            ::farine::__private::encode_arg("shop.add", "item", & item) ?,
            ::farine::__private::encode_arg("shop.add", "quantity", & quantity) ?
        ];
        ::farine::__private::call::<
            <ShopResult<
                u64,
            > as ::farine::__private::RpcOutput<::farine::__private::Fallible>>::Ok,
        >(&self.client, "shop", "add", __args, self.options)
            .await
    }
    /// Calls `shop.items` over AMQP.
    pub async fn items(
        &self,
        from: u64,
    ) -> ::farine::__private::Result<
        ::farine::__private::RpcStream<
            <farine::Result<
                Item,
            > as ::farine::__private::RpcOutput<::farine::__private::Fallible>>::Ok,
        >,
    >
    where
        for<'de> <farine::Result<
            Item,
        > as ::farine::__private::RpcOutput<
            ::farine::__private::Fallible,
        >>::Ok: ::farine::__private::Deserialize<'de>,
    {
        let __args = ::std::vec![
            ::farine::__private::encode_arg("shop.items", "from", & from) ?
        ];
        ::farine::__private::call_stream::<
            <farine::Result<
                Item,
            > as ::farine::__private::RpcOutput<::farine::__private::Fallible>>::Ok,
        >(&self.client, "shop", "items", __args, self.options)
            .await
    }
    /// Calls `shop.name` over AMQP.
    pub async fn name(
        &self,
    ) -> ::farine::__private::Result<
        <&'static str as ::farine::__private::RpcOutput<
            ::farine::__private::Borrowed,
        >>::Ok,
    >
    where
        for<'de> <&'static str as ::farine::__private::RpcOutput<
            ::farine::__private::Borrowed,
        >>::Ok: ::farine::__private::Deserialize<'de>,
    {
        let __args = ::std::vec![];
        ::farine::__private::call::<
            <&'static str as ::farine::__private::RpcOutput<
                ::farine::__private::Borrowed,
            >>::Ok,
        >(&self.client, "shop", "name", __args, self.options)
            .await
    }
    /// Calls `shop.beta` over AMQP.
    #[cfg(feature = "beta")]
    pub async fn beta(&self) -> ::farine::__private::Result<Total>
    where
        for<'de> Total: ::farine::__private::Deserialize<'de>,
    {
        let __args = ::std::vec![];
        ::farine::__private::call::<
            Total,
        >(&self.client, "shop", "beta", __args, self.options)
            .await
    }
}
impl ::farine::__private::FromClient for ShopClient {
    fn from_client(client: ::farine::__private::Client) -> Self {
        Self::new(client)
    }
}
