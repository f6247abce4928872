create table ledger_entries (
    id bigint primary key,
    amount bigint not null
);
