;; pong.wat — Caxton example agent (ABI version 1): the other half of ping.wat.
;;
;; Replies "pong K/N" to a message "ping K/N" (K and N in decimal) and
;; "pong ?" to anything else. It never sends on its own: its reply is what
;; it says. When the message came from another agent, the runtime carries
;; that reply back to the sender as an INFORM in the same conversation,
;; which is how ping and pong hold a conversation.
;; A FAILURE (one of its replies could not be delivered) is logged at warn
;; level and not answered.
;;
;; Try it on its own:
;;   caxton deploy pong examples/agents/pong.wat
;;   caxton send pong "ping 3/7"          # -> pong 3/7
;;   caxton send pong hello               # -> pong ?
;; and with ping (see ping.wat):
;;   caxton send ping 5 --conversation demo && caxton trace demo
(module
  (import "caxton" "log"          (func $log (param i32 i32 i32)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "ping ")                       ;; 5 bytes
  (data (i32.const 32) "pong ?")                      ;; 6 bytes
  (data (i32.const 48) "\"performative\":\"failure\"")  ;; 24 bytes
  (data (i32.const 80) "/")                           ;; 1 byte

  ;; Bump allocator, reset on every caxton_alloc (once per message).
  (global $heap (mut i32) (i32.const 1024))

  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                      (i64.const 0xFFFF))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; Offset of the first [needle, needle+needle_len) in [hay, hay+hay_len), or -1.
  (func $find (param $hay i32) (param $hay_len i32) (param $needle i32) (param $needle_len i32)
              (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $at
        (br_if $none (i32.gt_u (i32.add (local.get $i) (local.get $needle_len)) (local.get $hay_len)))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $byte
            (if (i32.eq (local.get $j) (local.get $needle_len)) (then (return (local.get $i))))
            (br_if $differs
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $byte)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $at)))
    (i32.const -1))

  ;; 1 if [ptr, ptr+len) is one or more decimal digits, else 0.
  (func $all_digits (param $ptr i32) (param $len i32) (result i32)
    (local $end i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (loop $digit
      (if (i32.ge_u (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 0x30)) (i32.const 10))
        (then (return (i32.const 0))))
      (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $ptr) (local.get $end))))
    (i32.const 1))

  ;; 1 if the message being handled is a FAILURE. The envelope is JSON, and
  ;; the bytes '"performative":"failure"' can only be that field: inside a
  ;; JSON string every quote is escaped.
  (func $is_failure (result i32)
    (local $n i32) (local $buf i32)
    ;; a zero-length buffer: message_info writes nothing and says how much it needs
    (local.set $n (call $message_info (i32.const 0) (i32.const 0)))
    (if (i32.le_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $buf (call $bump (local.get $n)))
    (if (i32.eqz (local.get $buf)) (then (return (i32.const 0))))
    (drop (call $message_info (local.get $buf) (local.get $n)))
    (i32.ge_s (call $find (local.get $buf) (local.get $n) (i32.const 48) (i32.const 24)) (i32.const 0)))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $rest i32) (local $rest_len i32) (local $slash i32)
    (if (call $is_failure)
      (then
        (call $log (i32.const 2) (local.get $ptr) (local.get $len))
        (return (i64.const 0))))
    ;; "ping " followed by K/N: the rest after the prefix is digits '/' digits
    (block $other
      (br_if $other (i32.lt_u (local.get $len) (i32.const 5)))
      (br_if $other (i32.ne (call $find (local.get $ptr) (i32.const 5) (i32.const 16) (i32.const 5))
                            (i32.const 0)))
      (local.set $rest (i32.add (local.get $ptr) (i32.const 5)))
      (local.set $rest_len (i32.sub (local.get $len) (i32.const 5)))
      (local.set $slash (call $find (local.get $rest) (local.get $rest_len) (i32.const 80) (i32.const 1)))
      (br_if $other (i32.lt_s (local.get $slash) (i32.const 0)))
      (br_if $other (i32.eqz (call $all_digits (local.get $rest) (local.get $slash))))
      (br_if $other (i32.eqz (call $all_digits
                                (i32.add (local.get $rest) (i32.add (local.get $slash) (i32.const 1)))
                                (i32.sub (local.get $rest_len) (i32.add (local.get $slash) (i32.const 1))))))
      ;; "ping" and "pong" differ in their second letter only: answer in place.
      (i32.store8 (i32.add (local.get $ptr) (i32.const 1)) (i32.const 0x6F))  ;; 'o'
      (return (call $pack (local.get $ptr) (local.get $len))))
    (call $pack (i32.const 32) (i32.const 6)))
)
