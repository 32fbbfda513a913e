-- Charge one join to a client address, for a join refused before it reached the store (a bad
-- body or token): every join is held to the rate, whatever its fate. A join that reaches the
-- store is charged by `reserve.lua` instead, in the same round trip as its admission.
-- KEYS[1]: the address's bucket (`join_rate.lua`).
-- ARGV: rate (per second), burst.
-- Reply: 0 (charged) or how long until a join is allowed (ms, at least 1).
return charge_join(KEYS[1], ARGV[1], ARGV[2])
