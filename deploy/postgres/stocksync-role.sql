CREATE ROLE stocksync LOGIN REPLICATION PASSWORD :'password';
-- Only the columns stocksync reads: the rest of stores and products stays out of reach.
GRANT SELECT (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) ON stores TO stocksync;
GRANT SELECT (id, barcode, sku, product_type) ON products TO stocksync;
GRANT SELECT ON product_set_items, product_stores TO stocksync;
CREATE SCHEMA stock_sync AUTHORIZATION stocksync;      -- stocksync owns its schema
-- run by the table owner (setup does this when it can):
ALTER TABLE product_stores REPLICA IDENTITY FULL;
ALTER TABLE product_set_items REPLICA IDENTITY FULL;
CREATE PUBLICATION stock_sync FOR TABLE product_stores, product_set_items;
