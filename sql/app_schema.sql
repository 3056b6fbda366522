-- Reference application schema: the tables a seller's application already has.
-- Used by tests, benchmarks and the demo; a real deployment already has these tables
-- (possibly with more columns, which stocksync ignores).
CREATE TABLE IF NOT EXISTS stores (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    type        text NOT NULL,            -- 'TRENDYOL' | 'HEPSIBURADA' | others are ignored
    is_active   boolean NOT NULL DEFAULT true,
    send_stock  boolean NOT NULL DEFAULT true,
    seller_id   text,
    api_key     text,
    api_secret  text
);

CREATE TABLE IF NOT EXISTS products (
    id            uuid PRIMARY KEY,
    barcode       text UNIQUE,
    sku           text,
    name          text NOT NULL,
    product_type  text NOT NULL DEFAULT 'SIMPLE'   -- 'SIMPLE' | 'SET'
);

CREATE TABLE IF NOT EXISTS product_set_items (
    id                    uuid PRIMARY KEY,
    set_product_id        uuid NOT NULL,
    component_product_id  uuid NOT NULL,
    quantity              integer NOT NULL
);
CREATE INDEX IF NOT EXISTS product_set_items_component_idx ON product_set_items (component_product_id);
CREATE INDEX IF NOT EXISTS product_set_items_set_idx ON product_set_items (set_product_id);

CREATE TABLE IF NOT EXISTS product_stores (
    id                  uuid PRIMARY KEY,
    product_id          uuid NOT NULL,
    store_id            uuid NOT NULL,
    sellable_quantity   integer NOT NULL DEFAULT 0,
    committed_quantity  integer NOT NULL DEFAULT 0,
    UNIQUE (product_id, store_id)
);
CREATE INDEX IF NOT EXISTS product_stores_store_idx ON product_stores (store_id);
