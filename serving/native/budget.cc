#include "budget.h"

#include <algorithm>

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

Arrivals::Arrivals(ByteBudget* received, int64_t charge, Clock::duration grace,
                   Clock::duration tick)
    : received_(received), charge_(charge), grace_(grace), tick_(tick) {
  if (received_->limit() > 0) watch_ = std::thread([this] { Watch(); });
}

Arrivals::~Arrivals() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watch_.joinable()) watch_.join();
}

uint64_t Arrivals::Add(Sheddable* call) {
  std::lock_guard<std::mutex> lock(mu_);
  arriving_.emplace(next_, std::make_pair(call, clock_));
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
    const Clock::time_point now = Clock::now();
    clock_ += std::min<Clock::duration>(now - looked_, 2 * tick_);
    looked_ = now;
    if (!stop_) CheckLocked();
  }
}

void Arrivals::CheckLocked() {
  const Clock::duration cutoff = clock_ - grace_;
  int64_t late = 0;  // calls arriving for longer than the grace
  for (const auto& [ticket, entry] : arriving_) {
    if (entry.second > cutoff) break;  // (in ticket order, so in the order they started)
    ++late;
  }
  const int64_t held = received_->in_use();
  // Shed the newest late calls while the total passes the limit; one late call alone, with
  // nothing received, may go on (a cap raised past the budget).
  for (auto it = arriving_.end(); late > 0 && it != arriving_.begin();) {
    --it;
    if (it->second.second > cutoff) continue;
    if (held + late * charge_ <= received_->limit() || (late == 1 && held == 0)) break;
    if (it->second.first->Shed()) shed_.fetch_add(1, std::memory_order_relaxed);
    it = arriving_.erase(it);
    --late;
  }
}

}  // namespace seqserve
