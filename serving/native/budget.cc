#include "budget.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace seqserve {

bool ByteBudget::Take(int64_t bytes, BudgetWaiter* waiter) {
  if (limit_ <= 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  // A message may cost more than the whole budget (a cap raised past it): it runs alone.
  if (waiting_.empty() && (used_ + bytes <= limit_ || used_ == 0)) {
    used_ += bytes;
    return true;
  }
  waiting_.push_back({waiter, bytes});
  return false;
}

void ByteBudget::Force(int64_t bytes) {
  if (limit_ <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  used_ += bytes;
}

void ByteBudget::Give(int64_t bytes) {
  if (limit_ <= 0) return;
  std::vector<BudgetWaiter*> granted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    used_ -= bytes;
    GrantLocked(&granted);
  }
  for (BudgetWaiter* waiter : granted) waiter->Granted();  // outside the lock: it reads
}

bool ByteBudget::Cancel(BudgetWaiter* waiter) {
  std::vector<BudgetWaiter*> granted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(waiting_.begin(), waiting_.end(),
                           [waiter](const Wait& w) { return w.waiter == waiter; });
    if (it == waiting_.end()) return false;
    waiting_.erase(it);
    GrantLocked(&granted);  // it may have been the head that the others waited behind
  }
  for (BudgetWaiter* other : granted) other->Granted();
  return true;
}

void ByteBudget::GrantLocked(std::vector<BudgetWaiter*>* granted) {
  while (!waiting_.empty() && (used_ + waiting_.front().bytes <= limit_ || used_ == 0)) {
    used_ += waiting_.front().bytes;
    granted->push_back(waiting_.front().waiter);
    waiting_.pop_front();
  }
}

int64_t ByteBudget::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

Arrivals::Arrivals(ByteBudget* received, const ByteBudget* serving, int64_t charge,
                   Clock::duration grace, Clock::duration tick)
    : received_(received), serving_(serving), charge_(charge),
      grace_(grace), tick_(tick), statm_(open("/proc/self/statm", O_RDONLY | O_CLOEXEC)) {
  resident_ = Resident();
  if (received_->limit() > 0) watch_ = std::thread([this] { Watch(); });
}

Arrivals::~Arrivals() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watch_.joinable()) watch_.join();
  if (statm_ >= 0) close(statm_);
}

uint64_t Arrivals::Add(Sheddable* call) {
  std::lock_guard<std::mutex> lock(mu_);
  arriving_.emplace(next_, Arriving{call, clock_, resident_, accounted_});
  return next_++;
}

void Arrivals::Remove(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  arriving_.erase(ticket);  // (gone already if the watch shed it)
}

void Arrivals::Watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, tick_);
    if (stop_) break;
    // At every look, arrivals or not (a pread of /proc/self/statm: a few microseconds), so
    // that a call starting after a quiet spell is compared with the memory of that time.
    // Sampled outside the lock, which every call's Add and Remove take.
    lock.unlock();
    const int64_t resident = Resident();
    const int64_t accounted = received_->in_use() + serving_->in_use();
    const Clock::time_point now = Clock::now();
    lock.lock();
    clock_ += std::min<Clock::duration>(now - looked_, 2 * tick_);
    looked_ = now;
    resident_ = resident;
    accounted_ = accounted;
    if (!arriving_.empty()) CheckLocked();
  }
}

int64_t Arrivals::Resident() const {
  static const long page = sysconf(_SC_PAGESIZE);
  char text[128];
  const ssize_t n = statm_ < 0 ? -1 : pread(statm_, text, sizeof(text) - 1, 0);
  if (n <= 0) return -1;
  text[n] = '\0';
  long size = 0, resident = -1;
  if (std::sscanf(text, "%ld %ld", &size, &resident) != 2 || resident < 0) return -1;
  return static_cast<int64_t>(resident) * page;
}

void Arrivals::CheckLocked() {
  const Clock::duration cutoff = clock_ - grace_;
  int64_t late = 0;     // calls arriving for longer than the grace
  int64_t growth = 0;   // what arriving messages hold: the most the process has grown, beyond
  bool known = true;    // what the budgets took, since one of the late calls started
  for (const auto& [ticket, entry] : arriving_) {
    if (entry.started > cutoff) break;  // (in ticket order, so in the order they started)
    ++late;
    if (entry.resident < 0 || resident_ < 0) {
      known = false;
    } else {
      growth = std::max(growth, (resident_ - entry.resident) - (accounted_ - entry.accounted));
    }
  }
  if (late == 0) return;
  const int64_t most = late * charge_;  // (each holds at most a message at the cap)
  const int64_t arriving = known ? std::min(growth, most) : most;
  const int64_t held = received_->in_use();
  // Shed the newest late calls while the total passes the limit, taking each to hold an
  // equal share of what arrives; one late call alone, with nothing received, may go on (a
  // cap raised past the budget).
  int64_t left = late;
  for (auto it = arriving_.end(); left > 0 && it != arriving_.begin();) {
    --it;
    if (it->second.started > cutoff) continue;
    if (held + arriving * left / late <= received_->limit() || (left == 1 && held == 0)) break;
    if (it->second.call->Shed()) shed_.fetch_add(1, std::memory_order_relaxed);
    it = arriving_.erase(it);
    --left;
  }
}

}  // namespace seqserve
