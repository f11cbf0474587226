;; attacker.wat — test fixture: one agent that carries out many attacks on
;; demand, and echoes anything else, so a test can check that it keeps
;; answering (in the same worker) after each one.
;;   "loop"        -> pure wasm infinite loop (burns fuel until it runs out,
;;                    or runs until the wall-clock timeout)
;;   "clock"       -> busy-waits forever on caxton.now_ms (mostly host time,
;;                    little fuel: ends by the wall-clock timeout)
;;   "unreachable" -> executes `unreachable`
;;   "div0"        -> i32.div_s by a runtime zero
;;   "recurse"     -> unbounded recursion (call stack exhausted)
;;   "oobstore"    -> i32.store far past the end of memory (out-of-bounds trap)
;;   "grow"        -> memory.grow by one page until it returns -1, then
;;                    replies "grow-failed"
;;   "oob"         -> returns a reply pointer outside its memory (no trap)
;;   "big"         -> replies with the 2000 bytes at offset 0 (no trap)
;;   anything else -> echo
(module
  (import "caxton" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)

  (data (i32.const 16) "loop")         ;; 4 bytes
  (data (i32.const 32) "clock")        ;; 5
  (data (i32.const 48) "unreachable")  ;; 11
  (data (i32.const 64) "div0")         ;; 4
  (data (i32.const 80) "recurse")      ;; 7
  (data (i32.const 96) "oobstore")     ;; 8
  (data (i32.const 112) "grow")        ;; 4
  (data (i32.const 128) "oob")         ;; 3
  (data (i32.const 144) "big")         ;; 3
  (data (i32.const 160) "grow-failed") ;; 11

  (global $spins (mut i64) (i64.const 0))

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the first page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; 1 if [a, a+alen) equals [b, b+blen), else 0
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen))
      (then (return (i32.const 0))))
    (block $diff
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $alen))
          (then (return (i32.const 1))))
        (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                             (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; never returns: each call recurses before it can add
  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1)))
             (local.get $n)))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $start i64)
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 4))
      (then
        (loop $forever
          (global.set $spins (i64.add (global.get $spins) (i64.const 1)))
          (br $forever))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 32) (i32.const 5))
      (then
        (local.set $start (call $now_ms))
        (loop $forever
          (br_if $forever (i64.ge_s (call $now_ms) (local.get $start))))
        (return (i64.const 0))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 48) (i32.const 11))
      (then (unreachable)))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 64) (i32.const 4))
      ;; len is 4 here, so the divisor (len - 4) is a runtime zero
      (then (return (call $pack (local.get $ptr)
        (i32.div_s (local.get $len) (i32.sub (local.get $len) (i32.const 4)))))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 80) (i32.const 7))
      (then (return (call $pack (local.get $ptr) (call $recurse (i32.const 0))))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 96) (i32.const 8))
      (then
        (i32.store (i32.const 0x7FFFFFF0) (local.get $len))
        (return (call $pack (local.get $ptr) (local.get $len)))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 112) (i32.const 4))
      (then
        (loop $more
          (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (return (call $pack (i32.const 160) (i32.const 11)))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 128) (i32.const 3))
      (then (return (i64.const 0xFFFF000000000010))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 144) (i32.const 3))
      (then (return (call $pack (i32.const 0) (i32.const 2000)))))
    (call $pack (local.get $ptr) (local.get $len)))
)
