import Coordination
import Delivery

/// The batcher tells the node's per-subscription counts what became of each message.
extension SubscriptionStats: DeliveryActivity {
    public func delivered(_ subscriptionIDs: [String]) {
        count(subscriptionIDs, \.delivered)
    }

    public func deadLettered(_ subscriptionIDs: [String]) {
        count(subscriptionIDs, \.deadLettered)
    }
}
