-- Why an order ended as it did (the broker's rejection text, or why it waits):
-- "insufficient buying power", "potential wash trade detected", "trade denied due
-- to pattern day trading protection", "rate limited (HTTP 429) after 4 attempts".
ALTER TABLE orders ADD COLUMN reason VARCHAR;
