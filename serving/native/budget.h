// Budgets of request bytes (docs/serving.md, "Memory, worst case").
//
// gRPC's HTTP/2 transport (Debian's 1.51) opens a stream's flow-control window to the whole
// message as soon as it has read the message's length prefix, whether or not the application
// has asked to read it: every call may cost its message in memory, up to the message cap,
// before anyone sees its size. Waiting to read does not help; only ending a call frees it.
// So the front end keeps two budgets:
// - received bytes: a message that has arrived counts its size until its call ends (or reads
//   the next one). Bytes still arriving cannot be seen per call, only in the whole: the watch
//   (Arrivals) reads the process's resident memory at each look, and what it has grown by
//   since a call's read started, beyond what the budgets took meanwhile, is what arriving
//   messages hold (at most the cap for each call still arriving after `grace`). While the
//   received bytes and that pass the limit, it ends the newest calls still arriving with
//   RESOURCE_EXHAUSTED, and the transport drops their bytes. So a call that is late because
//   no gRPC thread got to read it (two saturated cores), or a stream waiting for its client,
//   holds nothing and is never shed for it; a flood shows in the memory. Ages count on the
//   watch's own clock, which advances at most two ticks per look (a pause of the whole
//   process is not charged to the calls it delayed);
// - the further copies a message needs to be served (parsed, batched, or forwarded to the
//   Python server, which holds it three times more until it has answered it), taken after it
//   has arrived: a message that does not fit waits, in arrival order, until the messages ahead
//   of it are done (answered, when forwarded).
// The memory requests hold is then the sum of the two limits, and what may arrive within the
// grace and one tick of the watch before it acts.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace seqserve {

// The copies of a request held while it is served, beyond the received one: on the fast path
// the parsed request and the batch built from it; for a forwarded call the Python server's
// received buffer, its bytes and its parsed request (measured: a forwarded 64 MiB request
// raised the server's peak RSS by 4 × 64 MiB).
constexpr int64_t kFurtherCopies = 3;
// What a received message costs the transport: its size twice (measured: a flood of messages
// at the cap that waited, received, raised the peak RSS by twice their bytes).
constexpr int64_t kReceivedCopies = 2;

// What waits for bytes: told once they are its.
class BudgetWaiter {
 public:
  virtual ~BudgetWaiter() = default;
  virtual void Granted() = 0;
};

// A call whose message is still arriving, which the watch may end.
class Sheddable {
 public:
  virtual ~Sheddable() = default;
  // End the call with RESOURCE_EXHAUSTED if it is still arriving (true), else nothing.
  virtual bool Shed() = 0;
};

class ByteBudget {
 public:
  explicit ByteBudget(int64_t limit) : limit_(limit) {}

  // Take `bytes` now (true) or queue `waiter`, granted once they fit and every earlier waiter
  // has been served (false). A limit of 0 or less means no budget: always true.
  bool Take(int64_t bytes, BudgetWaiter* waiter);
  // Take `bytes` whether they fit or not.
  void Force(int64_t bytes);
  // Give back `bytes`; grants what now fits to waiters, in order, on this thread.
  void Give(int64_t bytes);
  // Remove `waiter` if it is still waiting (true): it will not be granted.
  bool Cancel(BudgetWaiter* waiter);

  int64_t limit() const { return limit_; }
  int64_t in_use() const;

 private:
  void GrantLocked(std::vector<BudgetWaiter*>* granted);

  struct Wait {
    BudgetWaiter* waiter;
    int64_t bytes;
  };
  const int64_t limit_;
  mutable std::mutex mu_;
  int64_t used_ = 0;
  std::deque<Wait> waiting_;
};

// The calls whose message is still arriving, and the watch that sheds the newest of them while
// what they hold, with what `received` holds, passes `received`'s limit.
class Arrivals {
 public:
  using Clock = std::chrono::steady_clock;
  // `serving`'s takings, with `received`'s, explain growth; `charge`: the most a message
  // still arriving can hold.
  Arrivals(ByteBudget* received, const ByteBudget* serving, int64_t charge,
           Clock::duration grace, Clock::duration tick);
  ~Arrivals();  // stops the watch

  // A read started (its ticket) or ended. A call stays alive while it is registered here.
  uint64_t Add(Sheddable* call);
  void Remove(uint64_t ticket);
  int64_t shed() const { return shed_.load(std::memory_order_relaxed); }

 private:
  void Watch();
  void CheckLocked();
  // The process's resident bytes now (-1: unknown: then a late call counts `charge`).
  int64_t Resident() const;

  struct Arriving {
    Sheddable* call;
    Clock::duration started;  // on the watch's clock
    int64_t resident;         // the process's resident bytes at the look before it started
    int64_t accounted;        // and what the budgets held then
  };
  ByteBudget* received_;
  const ByteBudget* serving_;
  const int64_t charge_;
  const Clock::duration grace_, tick_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  uint64_t next_ = 0;
  // The watch's clock: the time it has run, each look adding at most two ticks.
  Clock::duration clock_{0};
  Clock::time_point looked_ = Clock::now();
  const int statm_;  // /proc/self/statm, open
  int64_t resident_ = -1, accounted_ = 0;  // at the last look
  std::map<uint64_t, Arriving> arriving_;  // oldest first
  std::atomic<int64_t> shed_{0};
  std::thread watch_;  // last: started once the rest is built
};

}  // namespace seqserve
